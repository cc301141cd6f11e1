"""The FastAPI app: routes, API key, body size cap, admission (429) and disconnects.

Routes only translate: parse and check the request, hand it to RequestPreparer and ChatServing,
and send what comes back. One AsyncEngine serves every request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..engine.async_engine import AsyncEngine
from ..realtime.routes import mount_realtime
from .chat import ChatServing
from .drain import Drain, shutting_down
from .errors import APIError, bad_request, install_error_handlers, validation_error
from .metrics import ServerMetrics
from .openapi import publish_request_bodies
from .prepare import RequestPreparer
from .protocol import (
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from .settings import ServerSettings

logger = logging.getLogger("stepaudio.server")

ROUTES = ("/v1/chat/completions", "/v1/models", "/tokenize", "/health", "/metrics", "/version")
OPEN_ROUTES = ("/health", "/metrics", "/version")   # no API key needed, as in vLLM
CLIENT_CLOSED = 499  # nginx's status for "the client went away first"; only ever seen in metrics
T = TypeVar("T", bound=BaseModel)


class Admission:
    """Counts admitted requests; past max_num_seqs running + max_queue waiting, new ones get 429."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    def enter(self) -> Callable[[], None]:
        if self.active >= self.limit:
            raise APIError(429, f"the server is at capacity ({self.limit} requests running or queued); retry later",
                           code="server_busy", headers={"Retry-After": "1"})
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return release


class GateMiddleware:
    """Refuses requests while draining, checks the API key and counts every response by route and status
    (pure ASGI: streams pass untouched)."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: ServerMetrics, drain: Drain):
        self.app = app
        self.drain = drain
        self.api_key = settings.api_key.encode() if settings.api_key else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = CLIENT_CLOSED

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.drain.draining and path != "/metrics":
                await shutting_down().response()(scope, receive, record)
            elif self.api_key and path not in OPEN_ROUTES and not self._authorized(scope):
                error = APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error.response()(scope, receive, record)
            else:
                await self.app(scope, receive, record)
        except BaseException:
            if status == CLIENT_CLOSED:
                status = 500  # an unexpected error: the outermost handler answers 500
            raise
        finally:
            self.metrics.http_responses.labels(path if path in ROUTES else "other", str(status)).inc()

    def _authorized(self, scope: Scope) -> bool:
        """Compared as bytes in constant time (compare_digest refuses str with non-ASCII characters, which
        any client can send)."""
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.api_key)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON: 413 past `limit` bytes, 400 for anything that is not strict JSON text."""
    declared = request.headers.get("content-length", "")
    too_big = APIError(413, f"request body is larger than {limit} bytes (--max-request-body-mb)",
                       code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    try:
        data = json.loads(bytes(body), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise bad_request(f"the body is not valid JSON: {e}", code="invalid_json") from None
    _check_text(data)
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _check_text(data: Any) -> None:
    """Refuse strings with lone surrogates ("\\ud800" escapes): they are not text and break tokenizers."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request("the body holds a string with an unpaired surrogate escape", code="invalid_json")
        elif isinstance(item, dict):
            stack += item.keys()
            stack += item.values()
        elif isinstance(item, list):
            stack += item


def parse(model: type[T], data: Any) -> T:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """Run `work`, cancelling it if the client disconnects first (then None): an unstreamed request is
    aborted in the engine as soon as nobody waits for it."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


async def _then_release(events: AsyncIterator[str], release: Callable[[], None]) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield event
    finally:
        release()


def create_app(engine: AsyncEngine, settings: ServerSettings) -> FastAPI:
    llm = engine.engine
    metrics = ServerMetrics(llm, settings.model_name)
    preparer = RequestPreparer(llm, settings)
    serving = ChatServing(engine, settings)
    admission = Admission(llm.config.max_num_seqs + settings.max_queue)
    drain = Drain(engine, settings.shutdown_timeout)
    drain.watch(lambda: admission.active)
    app = FastAPI(title="stepaudio", version=__version__, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    publish_request_bodies(app, {"/v1/chat/completions": ChatCompletionRequest, "/tokenize": TokenizeRequest})
    mount_realtime(app, engine, settings, metrics.registry, drain)
    app.add_middleware(GateMiddleware, settings=settings, metrics=metrics, drain=drain)
    app.state.drain = drain  # the launcher starts it on SIGTERM
    app.state.max_body_bytes = settings.max_body_bytes  # also the cap on one WebSocket message (launcher)

    def served_name(requested: str | None) -> str:
        if requested is None:
            return settings.model_name
        if requested not in settings.served_model_names:
            raise APIError(404, f"The model `{requested}` does not exist.", code="model_not_found", param="model")
        return requested

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, root=settings.model_root, max_model_len=llm.max_model_len)
                               for name in settings.served_model_names])

    @app.post("/tokenize")
    async def tokenize(request: Request) -> TokenizeResponse:
        req = parse(TokenizeRequest, await read_json(request, settings.max_body_bytes))
        served_name(req.model)
        if req.messages is not None:
            prompt = await preparer.prompt(req.messages, tools=req.tools,
                                           add_generation_prompt=req.add_generation_prompt,
                                           continue_final_message=req.continue_final_message)
            text, ids, audio = prompt.prompt, prompt.token_ids, prompt.num_audio_tokens
        else:
            text, ids, audio = req.prompt, llm.tokenizer.encode(req.prompt), 0
        strs = [llm.tokenizer.decode([t]) for t in ids] if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=llm.max_model_len, tokens=ids, token_strs=strs,
                                prompt=text, audio_tokens=audio)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        tracker = metrics.track()  # latencies count from here: audio decoding is part of the wait
        req = parse(ChatCompletionRequest, await read_json(request, settings.max_body_bytes))
        model = served_name(req.model)
        release = admission.enter()
        streaming = False
        try:
            inputs = await preparer.chat(req)
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            if settings.log_requests:
                logger.info("request %s: %d prompt tokens (%d audio), stream=%s, %s", request_id,
                            len(inputs.prompt.token_ids), inputs.prompt.num_audio_tokens, req.stream, inputs.params)
            if req.stream:
                events = _then_release(serving.stream(request_id, req, inputs, model, tracker), release)
                # The background task releases the slot even when the client left before the stream began.
                sse = EventSourceResponse(events, sep="\n", background=BackgroundTask(release))
                streaming = True
                return sse
            response = await cancel_on_disconnect(request, serving.full(request_id, req, inputs, model, tracker))
            return Response(status_code=CLIENT_CLOSED) if response is None else JSONResponse(response.model_dump())
        finally:
            if not streaming:
                release()

    return app
