"""Mount the realtime mode on the server: the `/v1/realtime` WebSocket and the `/talk` browser page.

The socket speaks the OpenAI Realtime protocol as the `openai` client's GA types have it (the client asks
for `GET /v1/realtime?model=<id>` with `Authorization: Bearer KEY`). Browsers cannot set that header, so,
as with OpenAI, the key may instead come as the subprotocol `openai-insecure-api-key.<KEY>`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from importlib import resources

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from prometheus_client import CollectorRegistry

from ..engine.async_engine import AsyncEngine
from ..extras import MissingExtra, require_extra
from ..server.drain import Drain, shutting_down
from ..server.errors import APIError
from ..server.settings import ServerSettings
from .metrics import RealtimeMetrics
from .session import Limits, RealtimeSession
from .session_config import SessionConfig
from .tts import PiperSpeaker

logger = logging.getLogger("stepaudio.realtime")
KEY_PROTOCOL = "openai-insecure-api-key."


def _offered_key(websocket: WebSocket) -> str | None:
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(KEY_PROTOCOL):
            return protocol[len(KEY_PROTOCOL):]
    return None


class LiveSessions:
    """The open sessions, for the drain: each waits in `receive` for its client and would not notice a SIGTERM,
    so the drain tells every one to finish the answer in flight and close (1001), and waits for them."""

    def __init__(self) -> None:
        self.open: dict[RealtimeSession, WebSocket] = {}
        self._winding: set[asyncio.Task] = set()   # held: the loop keeps only weak references to tasks

    def __len__(self) -> int:
        return len(self.open)

    def wind_down(self) -> None:
        for session, websocket in self.open.items():
            task = asyncio.ensure_future(session.wind_down(lambda ws=websocket: ws.close(1001, "server shutting down")))
            self._winding.add(task)
            task.add_done_callback(self._winding.discard)

    def stop_answering(self) -> None:
        for session in self.open:
            session.stop_answering()


async def _refuse(websocket: WebSocket, error: APIError) -> None:
    """Refuse the handshake with an HTTP status and an OpenAI error body (the client sees why)."""
    await websocket.send_denial_response(error.response())


def mount_realtime(app: FastAPI, engine: AsyncEngine, settings: ServerSettings, registry: CollectorRegistry,
                   drain: Drain) -> None:
    metrics = RealtimeMetrics(registry, settings.model_name)
    speaker = PiperSpeaker()
    limits = Limits(max_conversation_audio_seconds=settings.max_audio_seconds, template=settings.chat_template)
    live = LiveSessions()
    drain.watch(lambda: len(live), on_start=live.wind_down, on_deadline=live.stop_answering)

    @app.get("/talk", include_in_schema=False)
    async def talk_page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("talk.html").read_text(encoding="utf-8"))

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols", [])
        protocol = "realtime" if "realtime" in offered else None
        if drain.draining:
            await _refuse(websocket, shutting_down())
            return
        # As bytes (the header's own, latin-1 round trip): compare_digest refuses str with non-ASCII characters.
        offered_key = (_offered_key(websocket) or "").encode("latin-1", "replace")
        if settings.api_key and not secrets.compare_digest(offered_key, settings.api_key.encode()):
            await _refuse(websocket, APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                                              code="invalid_api_key"))
            return
        await websocket.accept(subprotocol=protocol)
        model = websocket.query_params.get("model") or settings.model_name
        session = RealtimeSession(lambda event: websocket.send_text(json.dumps(event)), engine, speaker, metrics,
                                  SessionConfig(model=model), limits)
        if model not in settings.served_model_names:
            await session.error(f"The model `{model}` does not exist.", "model_not_found", "model")
            await websocket.close(code=1008)
            return
        try:
            require_extra("realtime", "/v1/realtime")
        except MissingExtra as e:  # a core install: the HTTP routes serve, realtime says what to install
            await session.error(str(e), "realtime_unavailable")
            await websocket.close(code=1011)
            return
        metrics.sessions.labels(settings.model_name).inc()
        live.open[session] = websocket
        try:
            await session.start()
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    await session.error("send events as JSON text frames, not binary", "invalid_event")
                    continue
                await session.handle(message["text"])
        except WebSocketDisconnect:
            pass
        finally:
            await session.close()
            del live.open[session]
            metrics.sessions.labels(settings.model_name).dec()
