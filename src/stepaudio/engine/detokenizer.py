"""Incremental detokenization of one output sequence, with stop strings.

Decoding only a small window of recent tokens keeps the cost per token constant. The window keeps
one step of already-emitted tokens in front as context (the prefix) because some decoders change
the first token of a text, e.g. SentencePiece drops its leading space; only what the newest tokens
add after that prefix is new text. A window whose text ends in U+FFFD stops inside a multi-byte
character (byte-level BPE splits Chinese and emoji over several tokens), so it is held back until
the next token completes the character.
"""

from __future__ import annotations

from ..text.reasoning import partial_marker_length
from ..text.tokenizer import StepTokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns token ids, a few at a time, into finished text, and cuts the output at a stop string.

    Text that could be the start of a stop string is held back, so no part of a stop string is
    ever emitted unless `include_stop_str_in_output`. When several stop strings match, the one that
    is complete first wins (then the one that starts first): the same choice whatever the deltas.
    """

    def __init__(self, tokenizer: StepTokenizer, skip_special_tokens: bool = True, stop: list[str] | None = None,
                 include_stop_str_in_output: bool = False):
        if stop and not all(stop):
            raise ValueError("stop strings must not be empty")
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._stop = list(stop or [])
        self._include_stop = include_stop_str_in_output
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the decode window: context tokens, already emitted
        self._read_offset = 0    # tokens before this one are decoded; the rest await a complete character
        self._held = ""          # decoded text that may begin a stop string
        self.text = ""           # all text emitted so far
        self.stop_reason: str | None = None  # the stop string that ended the output

    def add(self, token_ids: list[int]) -> str:
        """Text newly finished by these tokens; "" once a stop string has matched."""
        if self.stop_reason is not None:
            return ""
        self._ids += token_ids
        return self._release(self._decode_new(final=False), final=False)

    def flush(self) -> str:
        """The held-back text at the end of the output (a trailing invalid byte shows as U+FFFD)."""
        if self.stop_reason is not None:
            return ""
        return self._release(self._decode_new(final=True), final=True)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def _decode_new(self, final: bool) -> str:
        """Text the tokens after the read offset add to the window, once it ends on a whole character."""
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        window = self._decode(self._ids[self._prefix_offset:])
        if window.endswith(REPLACEMENT_CHAR) and not final:
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return window[len(prefix):]

    def _release(self, new_text: str, final: bool) -> str:
        """Emit new text up to a stop string, or up to what may still become one."""
        pending = self._held + new_text
        match = self._find_stop(pending)
        if match is not None:
            start, self.stop_reason = match
            cut = start + len(self.stop_reason) if self._include_stop else start
            self._held = ""
        else:
            cut = len(pending) if final else len(pending) - partial_marker_length(pending, self._stop)
            self._held = pending[cut:]
        self.text += pending[:cut]
        return pending[:cut]

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """(start, stop string) of the match that ends first in `text`, ties going to the earlier start."""
        matches = [(start + len(s), start, s) for s in self._stop if (start := text.find(s)) >= 0]
        if not matches:
            return None
        _, start, stop = min(matches)
        return start, stop
