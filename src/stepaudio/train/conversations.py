"""Two- and three-turn conversations whose follow-ups can only be answered from the earlier turns.

Earlier turns look as the chat CLI and the demo send them: the user turn (spoken or typed) and the
assistant's answer without its thinking. Follow-up kinds, each with an exact answer:
- "capital": "And of Germany?" after a capital question -> the capital of Germany;
- "again": "Say it again." -> the previous answer, word for word;
- "why": "Why?" -> the explanation behind the previous answer (its distilled reasoning);
- "sum": "Now add 3 to that." after a sum -> the new total;
- "new": an unrelated question or a sound to count -> answered on its own, so a second turn is not a
  replay of the first (measured before: three beeps asked second got "There is 1 beep.").
Held-out phrasings and countries are used only by the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .questions import CAPITALS, Question, _split, number_answers
from .targets import Target, heard, heard_text

_FOLLOW_UPS = {
    "capital": (("And of {x}?", "What about {x}?", "And {x}?"), ("How about {x}?",)),
    "again": (("Say it again.", "Can you repeat that?", "Repeat your answer, please."), ("Please say that once more.",)),
    "why": (("Why?", "Why is that?"), ("Can you explain why?",)),
    "sum": (("Now add {c} to that.", "Add {c} to that."), ("And if you add {c} more?",)),
}
_FIRST_SUM = ("What is {a} plus {b}?", "What do you get when you add {a} and {b}?")
_HELDOUT_FIRST_SUM = ("If I add {a} to {b}, what is the total?",)
CAPITAL_OF = dict(CAPITALS)


@dataclass
class Turn:
    text: str                  # what the user says or types (spoken or typed: `conversation_messages` decides)
    audio: np.ndarray | None = None   # a non-speech clip sent with the text (a sound question)


@dataclass
class Conversation:
    turns: list[Turn]
    answers: list[str]         # the assistant's answer to every turn but the last
    target: Target             # the last turn's think-format target
    kind: str                  # the last follow-up's kind
    accept: tuple[str, ...] = field(default=())   # lower-cased words an answer to the last turn must contain


def _phrase(kind: str, rng: np.random.Generator, heldout: bool, **values) -> str:
    train, held = _FOLLOW_UPS[kind]
    return str(rng.choice(held if heldout else train)).format(**values)


def capital_follow_up(rng: np.random.Generator, first: tuple[Question, Target], heldout: bool = False
                      ) -> tuple[Turn, Target, tuple[str, ...]]:
    """"And of X?" for a country X other than the one asked about (held-out countries when `heldout`)."""
    asked = next((c for c in CAPITAL_OF if c in first[0].text), "")
    others = [p for p in _split(CAPITALS, heldout) if p[0] != asked]
    country, capital = others[int(rng.integers(len(others)))]
    text = _phrase("capital", rng, heldout, x=country)
    answer = f"The capital of {country} is {capital}."
    reasoning = (f'{heard_text(text)} Before, the question was about the capital of {asked or "another country"}, '
                 f"so now they want the capital of {country}. {answer}")
    return Turn(text), Target(text, reasoning, answer), (capital.lower(),)


def again_follow_up(rng: np.random.Generator, previous_answer: str, heldout: bool = False
                    ) -> tuple[Turn, Target, tuple[str, ...]]:
    text = _phrase("again", rng, heldout)
    reasoning = f'{heard_text(text)} They want my last answer again: "{previous_answer}"'
    last_word = previous_answer.rstrip(".!?").split()[-1].lower()
    return Turn(text), Target(text, reasoning, previous_answer), (last_word,)


def why_follow_up(rng: np.random.Generator, first: tuple[Question, Target], heldout: bool = False
                  ) -> tuple[Turn, Target, tuple[str, ...]]:
    text = _phrase("why", rng, heldout)
    explanation = first[1].reasoning.removeprefix(heard(first[0])).strip() or first[1].answer
    reasoning = f"{heard_text(text)} They want the reason for my last answer. {explanation}"
    return Turn(text), Target(text, reasoning, explanation), ()


def sum_chain(rng: np.random.Generator, heldout: bool = False, steps: int = 1) -> Conversation:
    """"What is a plus b?" then `steps` x "Now add c to that." with every total computed."""
    a, b = int(rng.integers(2, 21)), int(rng.integers(1, 11))
    first = str(rng.choice(_HELDOUT_FIRST_SUM if heldout else _FIRST_SUM)).format(a=a, b=b)
    total = a + b
    turns, answers = [Turn(first)], [f"{a} plus {b} is {total}."]
    target = None
    for i in range(steps):
        c = int(rng.integers(1, 10))
        text = _phrase("sum", rng, heldout, c=c)
        answer = f"{total} plus {c} is {total + c}."
        target = Target(text, f"{heard_text(text)} My last answer was {total}, and {total} plus {c} is {total + c}.",
                        answer)
        turns.append(Turn(text))
        total += c
        if i < steps - 1:
            answers.append(answer)
    return Conversation(turns, answers, target, "sum", number_answers(total))


def conversation_messages(conv: Conversation, spoken: list[bool]) -> tuple[list[dict], list[np.ndarray | str]]:
    """OpenAI-shaped messages (audio parts as placeholders) and, in the order of the audio parts, what
    each holds: a clip (a sound turn's, whose question is typed) or a text still to be spoken.

    `spoken[i]` says whether turn i is sent as speech.
    """
    messages: list[dict] = []
    audio: list[np.ndarray | str] = []
    for i, turn in enumerate(conv.turns):
        if turn.audio is not None:  # as the chat CLI sends it: the text, then the clip
            messages.append({"role": "user", "content": [{"type": "text", "text": turn.text}, {"type": "audio"}]})
            audio.append(turn.audio)
        elif spoken[i]:
            messages.append({"role": "user", "content": [{"type": "audio"}]})
            audio.append(turn.text)
        else:
            messages.append({"role": "user", "content": turn.text})
        if i < len(conv.answers):
            messages.append({"role": "assistant", "content": conv.answers[i]})
    return messages, audio


FOLLOW_UP_KINDS = ("capital", "again", "why", "sum", "new")


def random_conversation(rng: np.random.Generator, items: list[tuple[Question, Target]], heldout: bool = False,
                        new_turn: tuple[Turn, Target, tuple[str, ...]] | None = None,
                        kind: str | None = None) -> Conversation:
    """A two- or three-turn conversation from answered questions `items` (question, distilled target).

    `new_turn`, when given, is an unrelated last turn (e.g. a sound to count) used for kind "new";
    `kind` picks the follow-up kind, else it is drawn.
    """
    capitals = [it for it in items if it[0].kind == "capital"]
    explained = [it for it in items if it[0].kind in ("capital", "fact", "open") and it[1].answer]
    if kind is None:
        kind = str(rng.choice([k for k in FOLLOW_UP_KINDS if new_turn or k != "new"]))
    if kind == "sum":
        return sum_chain(rng, heldout, steps=int(rng.integers(1, 3)))
    pool = capitals if kind == "capital" else explained
    first = pool[int(rng.integers(len(pool)))]
    turns, answers = [Turn(first[0].text)], [first[1].answer]
    if kind == "capital":
        turn, target, accept = capital_follow_up(rng, first, heldout)
        if not heldout and rng.random() < 0.3:  # a third turn: the answer once more
            turns.append(turn)
            answers.append(target.answer)
            turn, target, accept = again_follow_up(rng, target.answer, heldout)
            kind = "again"
    elif kind == "again":
        turn, target, accept = again_follow_up(rng, first[1].answer, heldout)
    elif kind == "why":
        turn, target, accept = why_follow_up(rng, first, heldout)
    else:
        turn, target, accept = new_turn
    turns.append(turn)
    return Conversation(turns, answers, target, kind, accept)
