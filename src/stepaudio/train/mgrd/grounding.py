"""Is a reasoning chain grounded in what was heard? A lexical pre-filter, a quantity check, a rubric judge.

The paper's filter keeps chains that are acoustically grounded, coherent and correct, and names neither a
judge nor a detector (training_realtime_eval.md §1.4). Here, cheapest first:
- lexical: acoustic terms (pitch, Hz, loud, beep, rising ...) against surrogate phrases ("the transcript
  says", "I cannot hear", "as a text model" ...): grounded needs enough of the first and none of the second;
- quantities: every frequency, level and duration a chain states must match one the generator used (the
  model at chance invents "1031 Hz" for a 2069 Hz tone: that chain is rejected even when the answer is right);
- task cue: the chain cites what its task's answer depends on (a level for loudness, a frequency for pitch);
- consistency: the numbers a comparison chain states order the tones as its answer does;
- rubric judge: any OpenAI-compatible chat model answers GROUNDED/SURROGATE and COHERENT/INCOHERENT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...evaluation.http import post_json

ACOUSTIC_TERMS = (
    "pitch", "hz", "hertz", "frequency", "tone", "tones", "loud", "louder", "quiet", "quieter", "volume", "db",
    "decibel", "level", "beep", "beeps", "sound", "sounds", "hear", "heard", "listen", "rising", "falling", "rises",
    "falls", "sweep", "higher", "lower", "duration", "lasts", "long", "longer", "shorter", "seconds", "rhythm",
    "tempo", "beat", "beats", "timbre", "noise", "intonation", "prosody", "clip", "onset", "starts", "ends",
)
SURROGATE_PHRASES = (
    "the transcript", "transcription says", "the lyrics", "the text says", "based on the text", "the caption",
    "i cannot hear", "i can't hear", "i can not hear", "unable to hear", "cannot listen", "can't listen",
    "i am a text", "i'm a text", "as a text-based", "as a text model", "as an ai language model", "no audio",
    "cannot process audio", "can't process audio", "do not have access to the audio", "don't have access to the audio",
    "without hearing", "cannot perceive",
)
DENIAL_PHRASES = tuple(p for p in SURROGATE_PHRASES if p.startswith(("i ", "i'm", "as ", "unable", "cannot", "can't",
                                                                     "no audio", "do not", "don't", "without")))
# The cue a task's answer depends on, which a faithful chain must cite (besides its conclusion: "louder" in
# "so the first is louder" is not a reason). A loudness answer argued from two frequencies is right for a
# reason that is not the loudness; the quantity check alone passes it when the frequencies are near the
# clip's. Tasks not named here are not checked for a cue.
TASK_CUES = {
    "higher": ("pitch", "hz", "hertz", "khz", "frequency"),
    "louder": ("db", "decibel", "decibels", "level", "levels", "volume", "loudness", "amplitude", "quiet", "quieter",
               "soft", "softer", "intensity"),
    "direction": ("start", "starts", "begins", "end", "ends", "sweep", "glides", "moves"),
    "longer": ("s", "seconds", "duration", "lasts", "last"),
    "count": ("beep", "beeps", "onsets", "starting", "times"),
}
_WORD = re.compile(r"[a-z]+")
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)\s*(hz|hertz|khz|db|decibels?|s|sec|secs|seconds?|ms)\b")


def lexical_counts(text: str) -> tuple[int, int]:
    """(acoustic words, surrogate phrases) in `text`."""
    lower = text.lower()
    words = _WORD.findall(lower)
    terms = set(ACOUSTIC_TERMS)
    return sum(w in terms for w in words), sum(lower.count(p) for p in SURROGATE_PHRASES)


def lexically_grounded(text: str, min_terms: int = 2) -> bool:
    acoustic, surrogate = lexical_counts(text)
    return surrogate == 0 and acoustic >= min_terms


def cites_task_cue(task: str | None, text: str) -> bool:
    """The chain names the cue its task's answer depends on (`TASK_CUES`; True for tasks without one)."""
    cues = TASK_CUES.get(task or "")
    return cues is None or any(w in cues for w in _WORD.findall(text.lower()))


# The unit whose first two stated values order a comparison task's answer (a sweep: its start and its end).
_ORDER_UNIT = {"higher": "hz", "louder": "db", "direction": "hz"}


def numbers_lead_to_answer(task: str | None, reasoning: str, answer: str | None) -> bool:
    """The chain's own numbers agree with its answer: for pitch and loudness the first two stated values of
    the cue's unit order the tones as the answer does ("-19 dB then -13 dB, so the first is louder" does not);
    for a sweep, the start and end frequencies rise or fall as the answer says. Chains with fewer than two
    such values, answers that name neither side, and other tasks pass."""
    unit = _ORDER_UNIT.get(task or "")
    values = quantities(reasoning)[unit] if unit else []
    if len(values) < 2 or values[0] == values[1]:
        return True
    words = set(_WORD.findall((answer or "").lower()))
    if task == "direction":
        claims = ({"rising", "rises", "up"} & words, {"falling", "falls", "down"} & words)
        stated_first = values[1] > values[0]  # rising
    else:
        claims = ({"first"} & words, {"second"} & words)
        stated_first = values[0] > values[1]  # levels are read as negative dB: the larger is the louder
    if bool(claims[0]) == bool(claims[1]):
        return True
    return stated_first == bool(claims[0])


def claims_no_hearing(text: str) -> bool:
    """The self-cognition error: the reply says it cannot hear or is a text-only model."""
    lower = text.lower()
    return any(p in lower for p in DENIAL_PHRASES)


def quantities(text: str) -> dict[str, list[float]]:
    """Stated quantities by unit: {"hz": [...], "db": [...], "s": [...]} (kHz and ms converted)."""
    out: dict[str, list[float]] = {"hz": [], "db": [], "s": []}
    for number, unit in _QUANTITY.findall(text.lower()):
        value = float(number)
        if unit in ("hz", "hertz", "khz"):
            out["hz"].append(value * (1000 if unit == "khz" else 1))
        elif unit.startswith("d"):
            out["db"].append(-abs(value))  # levels are below full scale; "6 dB" and "-6 dB" say the same
        else:
            out["s"].append(value / (1000 if unit == "ms" else 1))
    return out


@dataclass
class Tolerances:
    hz: float = 0.25       # relative
    db: float = 6.0        # absolute, dB
    s: float = 0.35        # relative


def _matches(value: float, truths: list[float], unit: str, tol: Tolerances) -> bool:
    if unit == "db":
        return any(abs(value - t) <= tol.db for t in truths)
    rel = tol.hz if unit == "hz" else tol.s
    return any(abs(value - t) <= rel * max(abs(t), 0.05) for t in truths)


def quantities_agree(chain: str, truth: str, tol: Tolerances = Tolerances()) -> bool:
    """Every quantity `chain` states matches one stated in `truth` (the generator's reasoning) in its unit;
    a chain stating a unit the truth never uses is wrong about it."""
    said, known = quantities(chain), quantities(truth)
    return all(_matches(v, known[unit], unit, tol) if known[unit] else False
               for unit, values in said.items() for v in values)


_RUBRIC = """You check one reasoning chain written by an audio model about a sound clip.

Question: {question}
Reasoning: {reasoning}
Final answer: {answer}

1. GROUNDED if the reasoning describes what is heard (pitch, loudness, timing, number of sounds, direction of
   a sweep), SURROGATE if it reasons from text (a transcript, captions), says it cannot hear, or never
   mentions the sound.
2. COHERENT if the steps lead to the final answer, INCOHERENT if they contradict it or each other.
Reply with two words, e.g. "GROUNDED COHERENT"."""
_VERDICT = re.compile(r"\b(GROUNDED|SURROGATE)\b.*?\b(INCOHERENT|COHERENT)\b", re.S)


def parse_rubric(text: str) -> tuple[bool, bool]:
    """(grounded, coherent) from the judge's reply (after any thinking); unreadable counts as neither."""
    m = _VERDICT.search(text.split("</think>")[-1].upper())
    return (m.group(1) == "GROUNDED", m.group(2) == "COHERENT") if m else (False, False)


@dataclass
class RubricJudge:
    api_base: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0

    def verdict(self, question: str, reasoning: str, answer: str) -> tuple[bool, bool]:
        payload = {"model": self.model, "temperature": 0.0, "max_tokens": 16,
                   "messages": [{"role": "user", "content": _RUBRIC.format(question=question, reasoning=reasoning,
                                                                           answer=answer)}]}
        reply = post_json(f"{self.api_base.rstrip('/')}/chat/completions", payload, self.api_key, self.timeout)
        return parse_rubric(reply["choices"][0]["message"].get("content") or "")


@dataclass
class ChainVerdict:
    correct: bool
    lexical: bool
    quantities: bool
    judged: bool | None       # None: no judge configured
    coherent: bool | None
    cue: bool = True          # cites the cue its task's answer depends on
    consistent: bool = True   # its own numbers lead to its answer

    @property
    def grounded(self) -> bool:
        return self.lexical and self.quantities and self.cue and self.judged is not False

    @property
    def keep(self) -> bool:
        return self.correct and self.grounded and self.consistent and self.coherent is not False


def check_chain(reasoning: str, answer: str | None, correct: bool, truth: str, question: str,
                min_terms: int = 2, tol: Tolerances = Tolerances(), judge: RubricJudge | None = None,
                task: str | None = None) -> ChainVerdict:
    """Every filter (the task cue and consistency only where `task` is given); the judge is asked only about
    chains the cheap checks kept."""
    lexical = lexically_grounded(reasoning, min_terms)
    agree = quantities_agree(reasoning, truth, tol)
    cue = cites_task_cue(task, reasoning)
    consistent = numbers_lead_to_answer(task, reasoning, answer)
    judged = coherent = None
    if judge is not None and correct and lexical and agree and cue and consistent:
        judged, coherent = judge.verdict(question, reasoning, answer or "")
    return ChainVerdict(correct, lexical, agree, judged, coherent, cue, consistent)
