"""When each brain runs: the four schedules and the segment sizes (Mind-Paced Speaking, reference §4.2)."""

from __future__ import annotations

from dataclasses import dataclass

# speak-first: MPS-spkfirst, speak at once while the first thoughts form (segment n+1 uses thoughts 1..n);
# think-first: MPS-thkfirst, one thought segment, then speak (segment n uses thoughts 1..n);
# think-then-speak: the whole reasoning first (MPS-tbs, the baseline); no-think: an empty think block.
SCHEDULES = ("speak-first", "think-first", "think-then-speak", "no-think")
DEFAULT_SCHEDULE = "speak-first"


@dataclass(frozen=True)
class Pacing:
    """Segment sizes and limits of one response.

    think_segment_tokens = 80 is the paper's T_c [C]. The response segment is counted in text tokens: the
    paper's T_r = 100 ta4 tokens hold 20 text tokens [C], and we speak text through a separate TTS, so the
    same 20 text tokens (about 15 words, 4-5 s of speech) keep the paper's ratio of thinking to speaking:
    80 think tokens must be written while 20 words play, which the default model does on one CPU [I].
    """

    schedule: str = DEFAULT_SCHEDULE
    think_segment_tokens: int = 80
    response_segment_tokens: int = 20
    max_thinking_tokens: int = 1024      # the formulation stream's budget; its thoughts then close
    max_response_tokens: int = 512       # spoken answer, all segments together

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("think_segment_tokens", "response_segment_tokens", "max_thinking_tokens", "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def thinks(self) -> bool:
        return self.schedule != "no-think"

    def thoughts_needed(self, segment: int, total: int | None) -> int:
        """Thought segments that must be ready before response segment `segment` (0-based) is written;
        `total` is the final count once the formulation has finished (None while it still thinks)."""
        if self.schedule == "no-think":
            return 0
        if self.schedule == "think-then-speak":
            return total if total is not None else 1 << 30
        needed = segment if self.schedule == "speak-first" else segment + 1
        return min(needed, total) if total is not None else needed
