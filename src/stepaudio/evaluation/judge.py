"""An LLM judge for open answers, against any OpenAI-compatible chat endpoint.

The instructions follow what Artificial Analysis describes for Big Bench Audio (training_realtime_eval.md
§3.4): judge consistency with the official answer, the first answer if it contradicts itself, the final
answer if working is shown; ignore irrelevant text; spelled-out numbers and misspelled names are fine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .http import post_json

_PROMPT = """You grade an answer to a question against the official answer.

Question: {question}
Official answer: {gold}
Answer to grade: {answer}

Rules: the answer is CORRECT when it agrees with the official answer. If it contradicts itself, grade the
first answer it proposes. If it shows working and then a final answer, grade only the final answer. Ignore
information that does not bear on the question. Numbers may be written in words; misspelled names are fine.
Reply with exactly one word: CORRECT or INCORRECT."""
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b")


@dataclass
class Judge:
    api_base: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0

    def correct(self, question: str, gold: str, answer: str) -> bool:
        """The judge's verdict; a reply with neither word counts as incorrect."""
        if not answer.strip():
            return False
        payload = {"model": self.model, "temperature": 0.0, "max_tokens": 16,
                   "messages": [{"role": "user", "content": _PROMPT.format(
                       question=question or "(the question was spoken in the audio)", gold=gold, answer=answer)}]}
        reply = post_json(f"{self.api_base.rstrip('/')}/chat/completions", payload, self.api_key, self.timeout)
        return parse_verdict(reply["choices"][0]["message"].get("content") or "")


def parse_verdict(text: str) -> bool:
    """The judge's first CORRECT / INCORRECT word (after any thinking); neither counts as incorrect."""
    m = _VERDICT.search(text.split("</think>")[-1].upper())
    return bool(m) and m.group(1) == "CORRECT"
