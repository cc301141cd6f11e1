"""Run items against a server or an in-process model, score them, and stream results to a JSONL file.

A result line is keyed by (item id, thinking budget); a rerun with the same results file skips every key
already there without an error, so an interrupted evaluation continues where it stopped. Budgets use the
server's `max_thinking_tokens` (budget forcing: at the cap the think block is closed and the model
answers); budget 0 asks for no thinking at all (`thinking: "off"`, the upstream non-CoT prompt).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..audio.io import AudioError
from .http import RequestFailed, post_json
from .items import EvalItem
from .judge import Judge
from .prompts import build_messages
from .scoring import rule_correct, split_reasoning

# The upstream stop token (<|EOT|>), sent as the official clients send it.
EOT_ID = 151665
Budget = int | None  # None: no cap ("inf")


def budget_key(budget: Budget) -> str | int:
    return "inf" if budget is None else budget


def parse_budgets(text: str) -> list[Budget]:
    """"0,64,256,inf" -> [0, 64, 256, None]."""
    budgets: list[Budget] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("inf", "none", "unlimited"):
            budgets.append(None)
        elif part.isdigit():
            budgets.append(int(part))
        else:
            raise ValueError(f"a thinking budget is a non-negative integer or 'inf', got {part!r}")
    if not budgets or len(set(budgets)) != len(budgets):
        raise ValueError("--thinking-budgets needs distinct values, e.g. 0,64,256,1024,inf")
    return budgets


@dataclass
class Sampling:
    max_tokens: int = 4096
    temperature: float = 0.7
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def options(self) -> dict[str, Any]:
        """Fields shared by the request body and SamplingParams (None: the server's default)."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class Reply:
    reasoning: str
    answer: str | None            # None: the think block never closed (no answer to score)
    reasoning_tokens: int
    completion_tokens: int
    latency_s: float
    finish_reason: str | None
    reasoning_tokens_estimated: bool = False


def _budget_fields(budget: Budget) -> dict[str, Any]:
    if budget is None:
        return {}
    return {"thinking": "off"} if budget == 0 else {"max_thinking_tokens": budget}


def reply_from_text(reasoning: str, content: str, finish_reason: str | None, thinking_off: bool) -> tuple[str, str | None]:
    """(reasoning, answer) from a reply whose reasoning may or may not have been split off already; the answer
    is None when the think block never closed (the length limit hit inside it)."""
    if thinking_off:
        return reasoning.strip(), content.strip()
    if reasoning:
        unanswered = not content.strip() and finish_reason == "length"
        return reasoning.strip(), None if unanswered else content.strip()
    return split_reasoning(content)


class ServerBackend:
    """Any OpenAI-compatible server: ours, vLLM, or the upstream deployment."""

    def __init__(self, api_base: str, model: str | None = None, api_key: str | None = None, timeout: float = 600.0,
                 retries: int = 5):
        from ..client import list_models

        self.api_base, self.api_key, self.timeout, self.retries = api_base.rstrip("/"), api_key, timeout, retries
        self.model = model or list_models(self.api_base, api_key)[0]

    def payload(self, item: EvalItem, sampling: Sampling, budget: Budget) -> dict[str, Any]:
        return {"model": self.model, "messages": build_messages(item), **sampling.options(),
                "stop_token_ids": [EOT_ID], "skip_special_tokens": False, "continue_final_message": True,
                "add_generation_prompt": False, **_budget_fields(budget)}

    def complete(self, item: EvalItem, sampling: Sampling, budget: Budget) -> Reply:
        start = time.perf_counter()
        body = post_json(f"{self.api_base}/chat/completions", self.payload(item, sampling, budget), self.api_key,
                         self.timeout, self.retries)
        latency = time.perf_counter() - start
        choice, usage = body["choices"][0], body.get("usage") or {}
        message = choice.get("message") or {}
        split = message.get("reasoning_content") or message.get("reasoning") or ""
        reasoning, answer = reply_from_text(split, message.get("content") or "", choice.get("finish_reason"),
                                            budget == 0)
        completion = int(usage.get("completion_tokens") or 0)
        counted = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        estimated = counted is None
        if estimated:  # a server that does not count them: share the tokens by characters
            total = len(reasoning) + len(answer or "")
            counted = round(completion * len(reasoning) / total) if total else 0
        return Reply(reasoning, answer, int(counted), completion, latency, choice.get("finish_reason"), estimated)


class InProcessBackend:
    """A model folder run by our engine in this process; items of one budget are batched together."""

    def __init__(self, llm):
        self.llm = llm

    @classmethod
    def from_dir(cls, model_dir: str | Path, dtype: str | None = None, device: str = "cpu",
                 quantization: str | None = None) -> "InProcessBackend":
        from ..engine.llm import LLM

        return cls(LLM(model_dir, dtype=dtype, device=device, quantization=quantization))

    def complete_batch(self, items: Sequence[EvalItem], sampling: Sampling, budget: Budget) -> list[Reply]:
        from ..engine.sampling import SamplingParams

        params = SamplingParams(**sampling.options(), stop_token_ids=[EOT_ID], skip_special_tokens=False,
                                **_budget_fields(budget))
        results = self.llm.chat([build_messages(item) for item in items], params, continue_final_message=True,
                                add_generation_prompt=False)
        replies = []
        for result in results:
            c = result.completions[0]
            reasoning, answer = reply_from_text(c.reasoning, c.content, c.finish_reason, budget == 0)
            replies.append(Reply(reasoning, answer, c.reasoning_tokens, c.completion_tokens, c.latency_s,
                                 c.finish_reason))
        return replies


class ResultStore:
    """The results JSONL: appended line by line (thread-safe), read back to skip finished work."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        if path.is_file():
            text = path.read_text()
            if text and not text.endswith("\n"):  # close a line cut by a crash so appends start clean
                with path.open("a") as f:
                    f.write("\n")
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a crash: that item runs again
                        print(f"stepaudio eval: ignoring unreadable line {number} of {path}", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)

    def finished(self) -> set[tuple[str, str | int]]:
        """Keys whose latest record is a result, not an error."""
        return {(r["id"], r["budget"]) for r in self.latest() if not r.get("error")}

    def append(self, record: dict[str, Any]) -> None:
        with self.lock:
            with self.path.open("a") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.records.append(record)

    def latest(self) -> list[dict[str, Any]]:
        """One record per (id, budget): the last one written (a retried error is replaced by its rerun)."""
        last: dict[tuple[str, str | int], dict[str, Any]] = {}
        for r in self.records:
            last[(r["id"], r["budget"])] = r
        return list(last.values())


def score(item: EvalItem, reply: Reply, judge: Judge | None, judge_all: bool) -> tuple[bool, str]:
    if reply.answer is None:
        return False, "unanswered"
    if judge is not None and (judge_all or item.style == "open"):
        return judge.correct(item.question, item.answer, reply.answer), "judge"
    verdict = rule_correct(reply.answer, item)
    assert verdict is not None, "open items are refused without a judge before the run"
    return verdict, "rule"


def _record(item: EvalItem, budget: Budget, reply: Reply | None, verdict: tuple[bool, str] | None,
            error: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {"id": item.id, "budget": budget_key(budget), "category": item.category,
                              "task": item.style, "gold": item.answer}
    if reply is not None:
        record.update(answer=reply.answer, reasoning=reply.reasoning, reasoning_tokens=reply.reasoning_tokens,
                      completion_tokens=reply.completion_tokens, latency_s=round(reply.latency_s, 3),
                      finish_reason=reply.finish_reason)
        if reply.reasoning_tokens_estimated:
            record["reasoning_tokens_estimated"] = True
    if verdict is not None:
        record["correct"], record["scored_by"] = verdict
    if error:
        record["error"] = error
    return record


def _scored(item: EvalItem, budget: Budget, get_reply: Callable[[], Reply], judge: Judge | None,
            judge_all: bool) -> dict[str, Any]:
    reply = None
    try:
        reply = get_reply()
        return _record(item, budget, reply, score(item, reply, judge, judge_all), None)
    except (RequestFailed, AudioError, OSError, KeyError, ValueError) as e:
        return _record(item, budget, reply, None, f"{type(e).__name__}: {e}")


def run_eval(items: Sequence[EvalItem], backend: ServerBackend | InProcessBackend, store: ResultStore,
             budgets: Iterable[Budget] = (None,), sampling: Sampling | None = None, concurrency: int = 8,
             judge: Judge | None = None, judge_all: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Every (item, budget) not yet in `store`; returns the store's latest records."""
    sampling = sampling or Sampling()
    open_ended = [item.id for item in items if item.style == "open"]
    if open_ended and judge is None:
        raise ValueError(f"{len(open_ended)} open-ended items (first: {open_ended[0]!r}) can only be scored by a "
                         "judge: pass --judge-url")
    done = store.finished()
    todo = [(item, b) for b in budgets for item in items if (item.id, budget_key(b)) not in done]
    bar = tqdm(total=len(todo), desc="stepaudio eval", disable=not progress, file=sys.stderr)
    correct = 0

    def finish(record: dict[str, Any]) -> None:
        nonlocal correct
        store.append(record)
        correct += bool(record.get("correct"))
        bar.update()
        bar.set_postfix(correct=f"{correct}/{bar.n}")

    if isinstance(backend, InProcessBackend):
        for budget in dict.fromkeys(b for _, b in todo):
            batch_items = [item for item, b in todo if b == budget]
            for start in range(0, len(batch_items), concurrency):
                chunk = batch_items[start:start + concurrency]
                try:
                    replies = backend.complete_batch(chunk, sampling, budget)
                except (AudioError, OSError, ValueError):
                    # One unreadable file fails its whole batch: rerun the batch item by item so only it fails.
                    for item in chunk:
                        finish(_scored(item, budget, lambda i=item: backend.complete_batch([i], sampling, budget)[0],
                                       judge, judge_all))
                    continue
                for item, reply in zip(chunk, replies):
                    finish(_scored(item, budget, lambda r=reply: r, judge, judge_all))
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(_scored, item, b, lambda i=item, b=b: backend.complete(i, sampling, b), judge,
                                   judge_all) for item, b in todo]
            for future in as_completed(futures):
                finish(future.result())
    bar.close()
    return store.latest()
