"""Questions and sentences written by the decoder itself, for listening practice at scale.

A few hundred hand-written questions let the LoRA recall a likely training question instead of
listening (measured: held-out spoken questions came back as training questions). The base decoder,
asked for a short question or sentence about a random vocabulary word, writes thousands of distinct
natural texts in seconds; their spoken forms train transcription and, with self-distilled answers,
spoken question answering. Texts touching the held-out evaluation set are dropped.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..engine.sampling import SamplingParams
from .questions import heldout_overlap
from .targets import qwen_prompt

QUESTION_STARTS = ("What", "How many", "Which", "Why", "Where", "Who", "When", "Can", "Do", "Is", "How")
_QUESTION_PROMPT = ('Write one short, simple question that starts with "{start}" and is about {topic}. '
                    "Reply with the question only.")
_SENTENCE_PROMPT = "Write one short everyday sentence about {topic}. Reply with the sentence only."
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 ,'\-]*[?.!]")


def clean_text(reply: str, question: bool, min_words: int = 4, max_words: int = 16) -> str | None:
    """The reply's first line when it is one plain English sentence of the wanted kind, else None."""
    line = reply.strip().splitlines()[0].strip().strip('"') if reply.strip() else ""
    if not _PLAIN.fullmatch(line) or line.endswith("?") != question:
        return None
    if not min_words <= len(line.split()) <= max_words or heldout_overlap(line):
        return None
    return line


def topic_words(vocabulary: Sequence[str]) -> list[str]:
    """Lower-case words of four letters or more (short pieces, names and acronyms make poor topics)."""
    return [w for w in vocabulary if len(w) >= 4 and w.isalpha() and w.islower()]


def generate_texts(llm, topics: Sequence[str], n: int, question: bool, seed: int, batch: int = 64,
                   progress: bool = True) -> list[str]:
    """Up to `n` distinct texts (greedy, so a seed reproduces them), tried in batches of topics."""
    rng = np.random.default_rng([seed, 11 if question else 13])
    params = SamplingParams(temperature=0.0, max_tokens=40)
    texts: dict[str, None] = {}
    attempts = 0
    bar = tqdm(total=n, desc=f"writing {'questions' if question else 'sentences'}", disable=not progress,
               file=sys.stderr)
    while len(texts) < n and attempts < 4 * n:
        prompts = []
        for topic in rng.choice(topics, size=batch):
            form = _QUESTION_PROMPT.format(start=rng.choice(QUESTION_STARTS), topic=topic) if question \
                else _SENTENCE_PROMPT.format(topic=topic)
            prompts.append(qwen_prompt(llm, form))
        attempts += batch
        for result in llm.generate(prompts, params):
            text = clean_text(result.completions[0].text, question)
            if text and text not in texts and len(texts) < n:
                texts[text] = None
                bar.update()
    bar.close()
    return list(texts)


def load_or_generate(path: Path, llm_factory: Callable, vocabulary: Sequence[str], n_questions: int,
                     n_sentences: int, seed: int, progress: bool = True) -> dict[str, list[str]]:
    """{"questions": [...], "sentences": [...]}, written once per run folder and read back after."""
    if path.is_file():
        cached = json.loads(path.read_text())
        if len(cached["questions"]) >= n_questions and len(cached["sentences"]) >= n_sentences:
            return {"questions": cached["questions"][:n_questions], "sentences": cached["sentences"][:n_sentences]}
    if n_questions == n_sentences == 0:
        return {"questions": [], "sentences": []}
    llm, topics = llm_factory(), topic_words(vocabulary)
    texts = {"questions": generate_texts(llm, topics, n_questions, True, seed, progress=progress),
             "sentences": generate_texts(llm, topics, n_sentences, False, seed, progress=progress)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(texts, indent=0) + "\n")
    tmp.replace(path)
    return texts
