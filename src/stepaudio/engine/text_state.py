"""Per-sequence text state: incremental detokenization, stop strings, and the reasoning/answer split."""

from __future__ import annotations

from ..text.reasoning import THINK_END, ReasoningParser
from ..text.tokenizer import StepTokenizer
from .detokenizer import IncrementalDetokenizer
from .sampling import SamplingParams


class SequenceText:
    def __init__(self, tokenizer: StepTokenizer, params: SamplingParams, starts_in_reasoning: bool):
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=params.skip_special_tokens,
                                                  stop=params.stop,
                                                  include_stop_str_in_output=params.include_stop_str_in_output)
        self.reasoning = ReasoningParser(starts_in_reasoning=starts_in_reasoning)
        self.in_reasoning = starts_in_reasoning

    @property
    def stop_reason(self) -> str | None:
        return self.detokenizer.stop_reason

    def add(self, token_ids: list[int]) -> tuple[str, str, str]:
        """(text, reasoning, content) deltas for newly generated tokens."""
        return self._split(self.detokenizer.add(token_ids), final=False)

    def finish(self) -> tuple[str, str, str]:
        return self._split(self.detokenizer.flush(), final=True)

    def _split(self, text: str, final: bool) -> tuple[str, str, str]:
        reasoning, content = self.reasoning.feed(text)
        if final:
            tail_reasoning, tail_content = self.reasoning.finish()
            reasoning, content = reasoning + tail_reasoning, content + tail_content
        # Only the new text and a marker's length before it can complete `</think>`: no rescan of the whole output.
        if self.in_reasoning and THINK_END in self.detokenizer.text[-(len(text) + len(THINK_END)):]:
            self.in_reasoning = False
        return text, reasoning, content
