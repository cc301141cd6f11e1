"""Graceful shutdown on SIGTERM: new requests get 503, those in flight finish, late ones end with a clean error.

An orchestrator sends SIGTERM and waits before it kills; a server that stopped listening at once would cut
every stream in the middle. While draining, /health answers 503 too (a load balancer stops sending), the
admitted requests run on until `timeout`, and any still running then get a 503 error (an error event in a
stream) instead of a closed socket.
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
    def __init__(self, engine: AsyncEngine, in_flight: Callable[[], int], timeout: float):
        self.engine = engine
        self.in_flight = in_flight
        self.timeout = timeout
        self.draining = False

    async def run(self) -> None:
        """Refuse new requests from now on and return once none is in flight (failing the rest at the deadline)."""
        self.draining = True
        deadline = time.monotonic() + self.timeout
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight():
            self.engine.fail_all(shutting_down())
            settle = time.monotonic() + SETTLE_SECONDS
            while self.in_flight() and time.monotonic() < settle:
                await asyncio.sleep(0.05)
