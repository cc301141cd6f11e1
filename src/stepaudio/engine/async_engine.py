"""AsyncEngine: one engine loop serving many awaiting requests (the server's view of the engine).

The loop runs each engine step in a worker thread so the event loop stays responsive. Requests and
aborts are queued and applied between steps, so the engine is only ever touched by one thread at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import torch

from .engine import LLMEngine
from .outputs import RequestOutput
from .sampling import SamplingParams


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._commands: list[tuple[str, tuple]] = []
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    async def generate(self, request_id: str, prompt_ids: list[int], mels: list[torch.Tensor],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs; leaving the iteration early (e.g. a disconnect) aborts it."""
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already in use")
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._queues[request_id] = queue
        self._commands.append(("add", (request_id, prompt_ids, mels, params)))
        self._ensure_loop()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._commands.append(("abort", (request_id,)))
        self._wake.set()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    def _apply_commands(self) -> None:
        commands, self._commands = self._commands, []
        for kind, args in commands:
            if kind == "abort":
                self.engine.abort(*args)
                continue
            if kind == "fail":
                self._fail_all(*args)
                continue
            request_id = args[0]
            try:
                self.engine.add_request(*args)
            except Exception as e:  # refused requests fail their own stream only
                queue = self._queues.get(request_id)
                if queue is not None:
                    queue.put_nowait(e)

    async def _run(self) -> None:
        while True:
            self._apply_commands()
            if not self.engine.has_unfinished_requests():
                self._wake.clear()
                if not self._commands:
                    await self._wake.wait()
                continue
            try:
                outputs = await asyncio.to_thread(self._step)
            except Exception as e:  # a failed step fails the requests in flight, never the loop itself
                self._fail_all(e)
                continue
            for out in outputs:
                queue = self._queues.get(out.request_id)
                if queue is not None:
                    queue.put_nowait(out if out.error is None else out.error)

    def fail_all(self, error: Exception) -> None:
        """Fail every request in flight with `error` (a shutdown), applied between steps like an abort."""
        self._commands.append(("fail", (error,)))
        self._wake.set()

    def _fail_all(self, error: Exception) -> None:
        """Abort every request the engine holds (freeing their KV blocks) and raise `error` in their streams."""
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
            queue = self._queues.get(request_id)
            if queue is not None:
                queue.put_nowait(error)

    def _step(self) -> list[RequestOutput]:
        with torch.inference_mode():
            return self.engine.step()
