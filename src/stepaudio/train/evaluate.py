"""The default model's report: held-out listening accuracy vs text, repeat WER, sound tasks, speed.

Everything here is generated with phrasings, entities and tone parameters that training never used
(see `questions`, `speech` and `sounds`). Scoring reads only the answer after `</think>`. The held-out
questions are spoken by every voice family asked for, each reported alone: the held-out families
(voices training never heard) and the training families (voices heard, questions not). Next to each the
decoder is given Whisper-base's own transcript of the same clips (see `whisper_reference`): what this
encoder lets a trained decoder hear. Multi-turn items ask held-out follow-ups after an earlier turn
whose answer is the reference one (the history is given, not generated, so each item scores one turn).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..audio.io import load_audio
from ..engine.llm import LLM
from ..engine.sampling import SamplingParams
from ..extras import MissingExtra
from .conversations import Conversation, conversation_messages, random_conversation
from .examples import sound_turn
from .questions import (CAPITALS, HELDOUT_REPEAT_SENTENCES, Question, answer_is_correct, arithmetic_question,
                        question_pool)
from .sounds import CHANCE, TASKS, random_sound_item
from .speech import REPORT_FAMILIES, random_voice, speak
from .targets import Target, heard

# Held-out instruction for "repeat what was said" (training used other phrasings).
REPEAT_PROMPT = "Say back exactly the words you heard."
GREEDY = SamplingParams(temperature=0.0, max_tokens=160)
MULTITURN_KINDS = ("capital", "again", "sum", "new")


def heldout_questions(seed: int = 1, n_arithmetic: int = 16) -> list[Question]:
    rng = np.random.default_rng(seed)
    pool = [q for q in question_pool(heldout=True) if q.kind != "repeat"]
    return pool + [arithmetic_question(rng, heldout=True) for _ in range(n_arithmetic)]


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """(edit distance in words, reference length) after lower-casing and dropping punctuation."""
    def words(s: str) -> list[str]:
        return re.sub(r"[^a-z0-9' ]+", " ", s.lower()).split()

    hyp, ref = words(hypothesis), words(reference)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def audioeval_clips() -> list[tuple[Path, str]]:
    """pytest-audioeval's English clips and their reference transcripts."""
    import importlib.util

    spec = importlib.util.find_spec("pytest_audioeval")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra("the WER check", "train", "pytest-audioeval")
    folder = Path(list(spec.submodule_search_locations)[0]) / "samples" / "audio" / "en"
    return [(wav, wav.with_suffix(".txt").read_text().strip()) for wav in sorted(folder.glob("*.wav"))]


@dataclass
class Report:
    items: dict[str, list[dict]] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


def _audio_part(wav: np.ndarray) -> dict:
    return {"type": "audio", "audio": wav}


def _answers(llm: LLM, conversations: list[list[dict]], desc: str, batch: int = 16) -> list[tuple[str, str]]:
    out = []
    for start in tqdm(range(0, len(conversations), batch), desc=desc, file=sys.stderr):
        for r in llm.chat(conversations[start:start + batch], GREEDY):
            out.append((r.completions[0].reasoning, r.completions[0].content))
    return out


def _score_questions(llm: LLM, questions: list[Question], audio: list[np.ndarray] | None, desc: str) -> list[dict]:
    if audio is None:
        conversations = [[{"role": "user", "content": q.text}] for q in questions]
    else:
        conversations = [[{"role": "user", "content": [_audio_part(w)]}] for w in audio]
    return [{"question": q.text, "kind": q.kind, "reasoning": r, "answer": a, "correct": answer_is_correct(a, q)}
            for q, (r, a) in zip(questions, _answers(llm, conversations, desc))]


def _accuracy(rows: list[dict]) -> float:
    return float(np.mean([r["correct"] for r in rows])) if rows else float("nan")


def family_clips(questions: list[Question], family: str, seed: int) -> list[np.ndarray]:
    """The questions spoken in random voices of `family`, the same clips for the same seed."""
    rng = np.random.default_rng([seed, *family.encode()])  # each family its own stream
    return [speak(q.text, random_voice(rng, family)) for q in questions]


def heldout_conversations(seed: int, per_kind: int = 8) -> list[Conversation]:
    """Held-out follow-ups (held-out phrasings and countries) after a reference first answer."""
    rng = np.random.default_rng([seed, 3])
    items = [(q, Target(q.text, heard(q), f"The capital of {country} is {capital}."))
             for q in question_pool(heldout=True) if q.kind == "capital"
             for country, capital in CAPITALS if country in q.text]
    convs = []
    for kind in MULTITURN_KINDS:
        for _ in range(per_kind):
            new_turn = sound_turn(random_sound_item(rng, heldout=True, task="count"))
            convs.append(random_conversation(rng, items, heldout=True, new_turn=new_turn, kind=kind))
    return convs


def _score_conversations(llm: LLM, convs: list[Conversation], family: str | None, seed: int) -> list[dict]:
    """Every user turn spoken in `family` (sound turns keep their clip), or typed when `family` is None."""
    rng = np.random.default_rng([seed, 4])
    conversations = []
    for conv in convs:
        messages, parts = conversation_messages(conv, [family is not None] * len(conv.turns))
        clips = iter([p if not isinstance(p, str) else speak(p, random_voice(rng, family)) for p in parts])
        for m in messages:
            if isinstance(m["content"], list):
                m["content"] = [_audio_part(next(clips)) if c["type"] == "audio" else c for c in m["content"]]
        conversations.append(messages)
    return [{"turns": [t.text for t in c.turns], "kind": c.kind, "reasoning": r, "answer": a,
             "correct": answer_is_correct(a, Question(c.kind, c.turns[-1].text, c.accept))}
            for c, (r, a) in zip(convs, _answers(llm, conversations, f"multi-turn, {family or 'typed'}"))]


def evaluate(model_dir: Path, base_dir: Path | None, seed: int = 1, sound_items: int = 20,
             whisper_reference: bool = True, families: tuple[str, ...] = REPORT_FAMILIES,
             multiturn_family: str | None = "pico", multiturn_per_kind: int = 8) -> Report:
    """The held-out report; with `whisper_reference`, also the decoder given Whisper-base's transcripts.
    An unknown family is a ValueError from `random_voice`, raised before any model loads."""
    rng = np.random.default_rng(seed)
    report = Report()
    questions = heldout_questions(seed)
    spoken = {f"speech_{family}": family_clips(questions, family, seed) for family in families}
    heard_by: dict[str, list[str]] = {}
    if whisper_reference:
        from .whisper_reference import WhisperTranscriber

        whisper = WhisperTranscriber()
        heard_by = {key: whisper.transcribe_all(wavs, f"whisper-base, {key}") for key, wavs in spoken.items()}
        del whisper
    if base_dir is not None:
        base = LLM(base_dir)
        report.items["text_before"] = _score_questions(base, questions, None, "base model, text")
        del base
    llm = LLM(model_dir)
    report.items["text_after"] = _score_questions(llm, questions, None, "trained, text")
    for key, wavs in spoken.items():
        report.items[key] = _score_questions(llm, questions, wavs, f"trained, {key}")
    for key, transcripts in heard_by.items():
        typed = [Question(q.kind, text, q.accept) for q, text in zip(questions, transcripts)]
        rows = _score_questions(llm, typed, None, f"trained, whisper transcript of {key}")
        for row, q in zip(rows, questions):
            row["whisper_errors"], row["words"] = word_errors(row["question"], q.text)
            row["question"], row["whisper_transcript"] = q.text, row["question"]
        report.items[f"cascade_{key}"] = rows
    if multiturn_per_kind:
        convs = heldout_conversations(seed, multiturn_per_kind)
        report.items["multiturn_typed"] = _score_conversations(llm, convs, None, seed)
        if multiturn_family:
            report.items[f"multiturn_{multiturn_family}"] = _score_conversations(llm, convs, multiturn_family, seed)
    repeats = [(text, speak(text, random_voice(rng, "espeak-heldout"))) for text in HELDOUT_REPEAT_SENTENCES]
    repeats += [(ref, load_audio(path)) for path, ref in audioeval_clips()]
    answers = _answers(llm, [[{"role": "user", "content": [_audio_part(w), {"type": "text", "text": REPEAT_PROMPT}]}]
                             for _, w in repeats], "repeat")
    report.items["repeat"] = [{"reference": ref, "answer": a, **dict(zip(("errors", "words"), word_errors(a, ref))),
                               "source": "audioeval" if i >= len(HELDOUT_REPEAT_SENTENCES) else "espeak-heldout"}
                              for i, ((ref, _), (_, a)) in enumerate(zip(repeats, answers))]
    sounds = [random_sound_item(rng, heldout=True, task=t) for t in TASKS for _ in range(sound_items)]
    answers = _answers(llm, [[{"role": "user", "content": [_audio_part(s.wav), {"type": "text", "text": s.question}]}]
                             for s in sounds], "sound tasks")
    report.items["sound"] = [{"task": s.task, "question": s.question, "expected": s.answer, "answer": a,
                              "correct": any(re.search(rf"\b{re.escape(x)}\b", a.lower()) for x in s.accept)}
                             for s, (_, a) in zip(sounds, answers)]
    report.summary = summarise(report)
    report.summary["decode_tok_s"] = decode_speed(llm)
    return report


def summarise(report: Report) -> dict[str, float]:
    s: dict[str, float] = {}
    for key in ("text_before", "text_after"):
        if key in report.items:
            s[f"{key}_accuracy"] = _accuracy(report.items[key])
    for key in [k for k in report.items if k.startswith("speech_")]:
        s[f"{key}_accuracy"] = _accuracy(report.items[key])
        if s.get("text_after_accuracy"):
            s[f"{key}_over_text"] = s[f"{key}_accuracy"] / s["text_after_accuracy"]
        rows = report.items.get(f"cascade_{key}")
        if rows:
            s[f"cascade_{key}_accuracy"] = _accuracy(rows)
            if s[f"cascade_{key}_accuracy"]:
                s[f"{key}_over_cascade"] = s[f"{key}_accuracy"] / s[f"cascade_{key}_accuracy"]
            s[f"whisper_wer_{key}"] = sum(r["whisper_errors"] for r in rows) / sum(r["words"] for r in rows)
    for key in [k for k in report.items if k.startswith("multiturn_")]:
        s[f"{key}_accuracy"] = _accuracy(report.items[key])
        for kind in MULTITURN_KINDS:
            rows = [r for r in report.items[key] if r["kind"] == kind]
            if rows:
                s[f"{key}_{kind}_accuracy"] = _accuracy(rows)
    for source in ("espeak-heldout", "audioeval"):
        rows = [r for r in report.items.get("repeat", []) if r["source"] == source]
        if rows:
            s[f"wer_{source}"] = sum(r["errors"] for r in rows) / sum(r["words"] for r in rows)
    for task in TASKS:
        rows = [r for r in report.items.get("sound", []) if r["task"] == task]
        if rows:
            s[f"sound_{task}_accuracy"] = _accuracy(rows)
    return s


def decode_speed(llm: LLM, tokens: int = 128) -> float:
    """Single-stream decode tokens per second (greedy, end of sequence ignored)."""
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    prompt = [[{"role": "user", "content": "Tell me a long story about a lighthouse."}]]
    llm.chat(prompt, SamplingParams(max_tokens=4))  # warm-up
    start = time.perf_counter()
    result = llm.chat(prompt, params)[0]
    return result.completions[0].completion_tokens / (time.perf_counter() - start)


def markdown(report: Report) -> str:
    s = report.summary
    lines = ["| measure | value |", "|---|---:|"]
    for key, value in s.items():
        lines.append(f"| {key} | {value:.3f} |")
    lines.append("")
    lines.append("| sound task | accuracy | chance |")
    lines.append("|---|---:|---:|")
    for task in TASKS:
        if f"sound_{task}_accuracy" in s:
            lines.append(f"| {task} | {s[f'sound_{task}_accuracy']:.2f} | {CHANCE[task]:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(report: Report, json_path: Path) -> None:
    json_path.write_text(json.dumps(asdict(report), indent=1) + "\n")
