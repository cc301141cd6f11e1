"""POST with retries: a busy or restarting server (429, 5xx, a dropped connection) is waited for with
exponential backoff; any other error is the request's fault and is raised at once."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from ..client import error_message

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class RequestFailed(RuntimeError):
    """The server refused the request (4xx) or kept failing after every retry."""


def _wait_seconds(attempt: int, response: httpx.Response | None, base: float, cap: float) -> float:
    if response is not None:
        try:
            return min(cap, float(response.headers.get("retry-after", "")))
        except ValueError:
            pass
    return min(cap, base * 2 ** attempt) * (0.5 + random.random() / 2)


def post_json(url: str, payload: dict[str, Any], api_key: str | None = None, timeout: float = 600.0,
              retries: int = 5, backoff: float = 1.0, max_wait: float = 60.0) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    last = ""
    for attempt in range(retries + 1):
        response = None
        try:
            response = httpx.post(url, json=payload, headers=headers, timeout=timeout)
        except httpx.TransportError as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if response.status_code < 400:
                return response.json()
            last = f"HTTP {response.status_code}: {error_message(response.content, limit=300)}"
            if response.status_code not in RETRY_STATUS:
                raise RequestFailed(last)
        if attempt < retries:
            time.sleep(_wait_seconds(attempt, response, backoff, max_wait))
    raise RequestFailed(f"{url} failed {retries + 1} times; last: {last}")
