"""Graceful shutdown on SIGTERM: new requests get 503, those in flight finish, late ones end with a clean error.

An orchestrator sends SIGTERM and waits before it kills; a server that stopped listening at once would cut
every stream in the middle. While draining, /health answers 503 too (a load balancer stops sending), the
admitted requests run on until `timeout`, and any still running then get a 503 error (an error event in a
stream) instead of a closed socket. Long-lived work that would not notice the drain by itself (a realtime
session waiting for its client's next event) registers a hook that tells it to wind down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..engine.async_engine import AsyncEngine
from .errors import APIError

SETTLE_SECONDS = 2.0  # after failing the late requests, time for their error events to go out


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry on another replica or later",
                    code="server_shutting_down", headers={"Retry-After": "1"})


class Drain:
    def __init__(self, engine: AsyncEngine, timeout: float):
        self.timeout = timeout
        self.draining = False
        self._counts: list[Callable[[], int]] = []
        self._on_start: list[Callable[[], None]] = []
        self._on_deadline: list[Callable[[], None]] = [lambda: engine.fail_all(shutting_down())]

    def watch(self, in_flight: Callable[[], int], on_start: Callable[[], None] | None = None,
              on_deadline: Callable[[], None] | None = None) -> None:
        """Wait for `in_flight()` to reach 0 before exiting; call `on_start` when the drain begins and
        `on_deadline` if work is still in flight at the timeout (the engine's requests are failed anyway)."""
        self._counts.append(in_flight)
        self._on_start += [on_start] if on_start else []
        self._on_deadline += [on_deadline] if on_deadline else []

    def in_flight(self) -> int:
        return sum(count() for count in self._counts)

    async def run(self) -> None:
        """Refuse new requests from now on and return once none is in flight (failing the rest at the deadline)."""
        self.draining = True
        for hook in self._on_start:
            hook()
        deadline = time.monotonic() + self.timeout
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight():
            for hook in self._on_deadline:
                hook()
            settle = time.monotonic() + SETTLE_SECONDS
            while self.in_flight() and time.monotonic() < settle:
                await asyncio.sleep(0.05)
