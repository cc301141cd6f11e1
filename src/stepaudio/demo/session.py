"""One browser conversation: the OpenAI messages re-sent each turn, what the chat shows, and the audio budget.

The whole history (audio included) goes to the server on every turn, as in the upstream demo, so the
audio a conversation may hold is capped: upstream allowed 10 MB of WAV, which is the default here,
counted as seconds of 16 kHz 16-bit mono audio (about 328 s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio.io import SAMPLE_RATE, load_audio
from ..client import user_message, waveform_parts

DEFAULT_AUDIO_BUDGET_SECONDS = 10 * 2**20 / (SAMPLE_RATE * 2)  # upstream's 10 MB of 16 kHz 16-bit WAV


class InputProblem(ValueError):
    """A turn the demo will not send (nothing to send, unreadable audio, over the budget); the message says why."""


@dataclass
class AudioBudget:
    limit_seconds: float = DEFAULT_AUDIO_BUDGET_SECONDS
    used_seconds: float = 0.0

    @property
    def left_seconds(self) -> float:
        return max(0.0, self.limit_seconds - self.used_seconds)

    def shown(self) -> tuple[float, float, float]:
        """Used, left and limit as shown, in tenths of a second: rounded so that used + left = limit."""
        limit = round(self.limit_seconds, 1)
        used = min(round(self.used_seconds, 1), limit)
        return used, round(limit - used, 1), limit

    def check(self, seconds: float) -> None:
        """Raise InputProblem when a clip of this length does not fit in what is left."""
        if seconds > self.left_seconds + 1e-9:
            _, left, limit = self.shown()
            raise InputProblem(f"This clip is {seconds:.1f} s long but only {left:.1f} s of this "
                               f"conversation's audio budget ({limit:.1f} s) is left. "
                               "Press Clear to start a new conversation, or send a shorter clip.")

    def spend(self, seconds: float) -> None:
        self.check(seconds)
        self.used_seconds += seconds

    def note(self) -> str:
        """The line under the chat: used and remaining audio."""
        used, left, limit = self.shown()
        return f"Audio budget: **{used:.1f} s used**, {left:.1f} s left of {limit:.1f} s per conversation"


@dataclass
class UserTurn:
    """A user turn ready to send: the OpenAI message, and the decoded audio (for its picture and the budget)."""

    message: dict[str, Any]
    waveform: np.ndarray | None

    @property
    def audio_seconds(self) -> float:
        return 0.0 if self.waveform is None else len(self.waveform) / SAMPLE_RATE


def prepare_turn(text: str, audio_path: str | None, budget: AudioBudget) -> UserTurn:
    """Decode and chunk the audio (25 s parts) and check it against the budget; InputProblem says what is wrong."""
    text = (text or "").strip()
    if not text and not audio_path:
        raise InputProblem("Nothing to send: record or upload audio, type a message, or both.")
    waveform = None
    if audio_path:
        try:
            waveform = load_audio(audio_path)
        except ValueError as e:
            raise InputProblem(f"Could not read that audio: {e}") from None
        budget.check(len(waveform) / SAMPLE_RATE)
    message = user_message(text)
    if waveform is not None:
        message["content"] += waveform_parts(waveform)
    return UserTurn(message, waveform)


@dataclass
class Conversation:
    """History for the server (`messages`) and for the chat (`shown`, thinking included) of one browser tab."""

    budget: AudioBudget = field(default_factory=AudioBudget)
    messages: list[dict[str, Any]] = field(default_factory=list)
    shown: list[dict[str, Any]] = field(default_factory=list)

    def request_messages(self, system: str, turn: UserTurn) -> list[dict[str, Any]]:
        """What goes to the server: the system prompt (if any), the history, the new turn."""
        head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
        return head + self.messages + [turn.message]

    def remember(self, turn: UserTurn, answer: str) -> None:
        """Keep a turn the server took: its audio counts against the budget from now on."""
        self.budget.spend(turn.audio_seconds)
        self.messages += [turn.message, {"role": "assistant", "content": answer}]


def visible(shown: list[dict[str, Any]], show_thinking: bool) -> list[dict[str, Any]]:
    """The chat's messages, without the thinking blocks when the user hid them."""
    return shown if show_thinking else [m for m in shown if not is_thinking(m)]


def is_thinking(message: dict[str, Any]) -> bool:
    return bool(message.get("metadata", {}).get("title"))
