"""Think-format targets: self-distilled from the LLM reading the transcript (the cold start of MGRD).

For a spoken question, the same decoder is asked the transcript as text, once for a short explanation
and once for a one-sentence answer. The target is `<think>` reasoning that first states what was heard,
then the explanation, then the answer — kept only when the answer is correct (rejection sampling).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..engine.llm import LLM
from ..engine.sampling import SamplingParams
from ..inputs import PreparedPrompt
from .questions import Question, answer_is_correct

THINK_CLOSE = "\n</think>\n\n"
_EXPLAIN = "{q}\nExplain the answer in one or two short sentences."
_ANSWER = "{q}\nAnswer in one short sentence."


@dataclass
class Target:
    question: str
    reasoning: str
    answer: str

    def text(self) -> str:
        """What the model writes after the generation prompt's `<think>\\n`."""
        return f"{self.reasoning}{THINK_CLOSE}{self.answer}"


def heard_text(text: str) -> str:
    """How a think block starts: what was heard."""
    return f'The user asks: "{text}"'


def heard(question: Question) -> str:
    return heard_text(question.text)


def repeat_target(question: Question) -> Target:
    return Target(question.text, f'{heard(question)} I should say the sentence back exactly: "{question.reference}"',
                  question.reference)


def transcribe_target(words: str) -> Target:
    return Target(words, f'The speaker says: "{words}" I should write these words exactly.', words)


def qwen_prompt(llm: LLM, user: str) -> PreparedPrompt:
    """A plain Qwen chat prompt (the decoder's native format), text only."""
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    return PreparedPrompt(text, llm.tokenizer.encode(text), [], [])


def _first_sentences(text: str, n: int = 2) -> str:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(parts[:n]).strip()


def distil(llm: LLM, questions: list[Question], batch: int = 32, progress: bool = True) -> dict[str, Target]:
    """A target for every non-repeat question, by text; rejected ones (wrong answer) have an empty answer.
    "open" questions have no answer to check: their target is what the decoder says reading them."""
    params = SamplingParams(temperature=0.0, max_tokens=72)
    todo = [q for q in questions if q.kind != "repeat"]
    out: dict[str, Target] = {}
    for start in tqdm(range(0, len(todo), batch), desc="distilling targets", disable=not progress, file=sys.stderr):
        chunk = todo[start:start + batch]
        prompts = [qwen_prompt(llm, form.format(q=q.text)) for q in chunk for form in (_EXPLAIN, _ANSWER)]
        results = llm.generate(prompts, params)
        for i, q in enumerate(chunk):
            explain = _first_sentences(results[2 * i].completions[0].text)
            answer = _first_sentences(results[2 * i + 1].completions[0].text, 1)
            correct = bool(answer) and (q.kind == "open" or answer_is_correct(answer, q))
            out[q.text] = Target(q.text, f"{heard(q)} {explain}".strip(), answer if correct else "")
    return out


def load_or_distil(path: Path, llm_factory, questions: list[Question], progress: bool = True) -> dict[str, Target]:
    """Accepted targets; all verdicts are cached in `path` (JSONL), so only new questions are distilled."""
    cached: dict[str, Target] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                t = Target(**json.loads(line))
            except (ValueError, TypeError):  # the last line of a run killed while appending: distilled again
                continue
            cached[t.question] = t
    missing = [q for q in questions if q.kind != "repeat" and q.text not in cached]
    if missing:
        fresh = distil(llm_factory(), missing, progress=progress)
        with path.open("a") as f:
            for t in fresh.values():
                f.write(json.dumps(asdict(t)) + "\n")
        cached.update(fresh)
    return {text: t for text, t in cached.items() if t.answer}
