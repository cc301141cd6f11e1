"""Perception-grounded items: questions whose answer needs the signal itself, with exact answers.

Sound items come from `train.sounds` (pitch order, loudness, duration, counting, sweep direction),
`perception` (intervals, tempo, rhythm, noise vs tone, which of two clips) and `spoken_style` (speaking
rate, voice pitch, stressed word); the held-out set uses other frequencies, waveforms, voices and
phrasings. Arithmetic items keep text reasoning in the mix. Each item is an `EvalItem` (scored by the
evaluation's own rules) plus its waveforms and the generator's grounded reasoning, whose numbers are the
ground truth the quantity check compares chains with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from ...evaluation.items import EvalItem
from ...evaluation.prompts import question_text
from ...evaluation.scoring import rule_correct
from ..examples import sound_reply
from ..questions import arithmetic_question
from .. import sounds
from ..sounds import SAMPLE_RATE, SoundItem
from . import perception, spoken_style
from .perception import PerceptionItem
from .phrasings import varied_question

TEXT_TASK = "arithmetic"
# The order fixes each task's item seeds: `train.sounds`' five first, as before, new tasks after them.
MAKERS = {**sounds.MAKERS, **perception.MAKERS, **spoken_style.MAKERS}
TASKS = tuple(MAKERS)
CHANCE = {**sounds.CHANCE, **perception.CHANCE, **spoken_style.CHANCE}
_CHOICES = {"direction": ("rising", "falling")}


@dataclass
class GroundedItem:
    item: EvalItem
    clips: tuple[np.ndarray, ...]  # one waveform per audio part, in prompt order; () for text items
    reference: str               # grounded reasoning built from the true facts ("" for text items)
    reply: str = ""              # the answer sentence that follows it ("The second tone is higher.")

    @property
    def task(self) -> str:
        return self.item.category

    @property
    def is_audio(self) -> bool:
        return bool(self.clips)

    def messages(self, inline_audio: bool) -> tuple[list[dict], list[np.ndarray]]:
        """The user turn as the evaluation sends it (question text, then each clip): with the waveforms
        inline (for the engine's `chat`) or as placeholders plus the waveform list (for training batches)."""
        content: list[dict] = [{"type": "text", "text": question_text(self.item)}]
        content += [{"type": "audio", "audio": wav} if inline_audio else {"type": "audio"} for wav in self.clips]
        return [{"role": "user", "content": content}], [] if inline_audio else list(self.clips)

    def correct(self, answer: str | None) -> bool:
        return bool(answer) and bool(rule_correct(answer, self.item))


def _from_sound(sound: SoundItem | PerceptionItem, item_id: str, rng: np.random.Generator) -> GroundedItem:
    if isinstance(sound, PerceptionItem):  # its choices are already in prompt order
        item = EvalItem(item_id, (), sound.question, sound.answer, sound.choices, sound.task, "mcq")
        return GroundedItem(item, sound.clips, sound.reasoning, sound.reply)
    if sound.task == "count":
        item = EvalItem(item_id, (), sound.question, sound.answer, (), sound.task, "short")
    else:
        choices = _CHOICES.get(sound.task, ("the first", "the second"))
        if rng.random() < 0.5:
            choices = choices[::-1]
        item = EvalItem(item_id, (), sound.question, sound.answer, tuple(choices), sound.task, "mcq")
    return GroundedItem(item, (sound.wav,), sound.reasoning, sound_reply(sound))


def sound_items(seed: int, tasks: tuple[str, ...], per_task: int, heldout: bool, tag: str,
                phrasings: str = "generator") -> list[GroundedItem]:
    """`per_task` items of each task; each item seeded by (seed, tag, task, index) so sets never overlap.
    `phrasings="varied"` asks training items in one of `phrasings.BANK`'s phrasings (held-out items keep
    theirs)."""
    out = []
    for task in tasks:
        for i in range(per_task):
            key = [seed, sum(tag.encode()), len(tag), list(MAKERS).index(task), i]
            rng = np.random.default_rng(key)
            g = _from_sound(MAKERS[task](rng, heldout), f"{tag}-{task}-{i:04d}", rng)
            if phrasings == "varied" and not heldout:
                g = replace(g, item=replace(g.item, question=varied_question(task, g.item.question, key + [7])))
            out.append(g)
    return out


def text_items(seed: int, n: int, heldout: bool, tag: str) -> list[GroundedItem]:
    rng = np.random.default_rng([seed, sum(tag.encode()), 99])
    out = []
    for i in range(n):
        q = arithmetic_question(rng, heldout)
        # "math": the final number is the answer ("4 minus 3 equals 1" is right; "short" would read the 4)
        out.append(GroundedItem(EvalItem(f"{tag}-{TEXT_TASK}-{i:04d}", (), q.text, q.accept[0], (), TEXT_TASK,
                                         "math"), (), ""))
    return out


def write_eval_items(items: list[GroundedItem], folder: Path) -> list[EvalItem]:
    """The audio items as WAV files and `EvalItem`s that point at them (what `run_eval` reads): `<id>.wav`
    for one clip, `<id>-<k>.wav` for clip k of several."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    out = []
    for g in items:
        names = [g.item.id] if len(g.clips) == 1 else [f"{g.item.id}-{k}" for k in range(len(g.clips))]
        paths = [folder / "audio" / f"{name}.wav" for name in names]
        for path, wav in zip(paths, g.clips):
            if not path.is_file():
                sf.write(path, wav, SAMPLE_RATE, subtype="FLOAT")
        i = g.item
        out.append(EvalItem(i.id, tuple(map(str, paths)), i.question, i.answer, i.choices, i.category, i.style))
    return out
