"""More ways to ask the comparison questions, for training items (`data.phrasings = "varied"`).

The generators ask each task in two training phrasings. A model tuned on two sentences learns to pick its
answer template from their surface words: after SFT the default model answered the held-out "Which of the
two tones has more volume: first or second?" with its pitch template, as if asked which tone is higher. A
wider bank of phrasings teaches the task by what it means. None of these is a held-out phrasing (the tests
check it); some share words with them ("volume", "pitch"), as any paraphrase would.
"""

from __future__ import annotations

import numpy as np

BANK: dict[str, tuple[str, ...]] = {
    "higher": (
        "Which tone is higher, the first or the second?",
        "Is the first or the second tone higher in pitch?",
        "Which of the two tones is higher?",
        "Which beep sounds higher, the first one or the second one?",
        "Listen to both tones. Which one is pitched higher?",
        "Compare the two tones. Which has the higher frequency, the first or the second?",
        "Is the first tone higher, or is the second tone higher?",
        "Two tones play one after the other. Which is the higher note?",
    ),
    "louder": (
        "Which sound is louder, the first or the second?",
        "Is the first or the second tone louder?",
        "Which of the two tones is louder?",
        "Which beep is played at a higher volume, the first one or the second one?",
        "Listen to both tones. Which one is louder?",
        "Compare the loudness of the two tones. Which is stronger, the first or the second?",
        "One of the two tones is quieter than the other. Which tone is the loud one?",
        "Two tones play one after the other. Which is played more loudly?",
    ),
    "direction": (
        "Is the pitch rising or falling?",
        "Does this sweep go up or down?",
        "Does the pitch of this tone go up or down?",
        "Listen to the sweep. Is it rising or falling?",
        "Does the frequency of this tone rise or fall?",
        "Which way does the pitch move, up or down?",
        "Is this a rising sweep or a falling one?",
        "Does the tone glide upward or downward?",
    ),
}
PHRASINGS = ("generator", "varied")


def varied_question(task: str, question: str, seed: list[int]) -> str:
    """A phrasing from the bank for a training item of `task` (its own question where the bank has no entry),
    drawn from `seed`: a stream of its own, so the item's clip is what the generator drew."""
    bank = BANK.get(task)
    return question if bank is None else bank[int(np.random.default_rng(seed).integers(len(bank)))]
