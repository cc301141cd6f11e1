"""Every failure leaves the server as an OpenAI-style error body: {"error": {message, type, param, code}}.

Client mistakes are 4xx with type "invalid_request_error" (400, 404, 413), "authentication_error"
(401) or "rate_limit_error" (429); anything unexpected is a logged 500 "server_error" and the
server keeps serving.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import CONTENT_PART_TYPES, ErrorInfo, ErrorResponse

logger = logging.getLogger("stepaudio.server")

_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


def error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _TYPES.get(status, "invalid_request_error")


class APIError(Exception):
    """A request the server refuses, with the HTTP status and the OpenAI error fields to send."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict:
        info = ErrorInfo(message=self.message, type=error_type(self.status), param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, *, code: str = "invalid_value", param: str | None = None) -> APIError:
    return APIError(400, message, code=code, param=param)


# Pydantic names union alternatives in error locations ("str", "list[...]", and after a list index the
# tag of a content part); they are dropped from the path shown to the client.
_UNION_BRANCHES = {"str", "int", "float", "bool", "none"}


def _location(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_BRANCHES or "[" in str(part):
            continue
        elif i > 0 and isinstance(loc[i - 1], int) and part in CONTENT_PART_TYPES:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """A 400 naming each bad field, e.g. "messages[0].content[1]: ...", as one message.

    Of a union's alternatives only the deepest complaint is kept: for a list given as `content`,
    "not a valid string" is noise next to what is wrong inside the list.
    """
    found = [(_location(tuple(err.get("loc", ()))), str(err.get("msg"))) for err in exc.errors()]
    kept = [(where, msg) for where, msg in found
            if not (where and any(other.startswith((where + ".", where + "[")) for other, _ in found))]
    messages = [f"{where}: {msg}" if where else msg for where, msg in kept[:5]]
    return bad_request("; ".join(messages) or "invalid request", param=kept[0][0] or None if kept else None)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers).response()

    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error while serving %s %s", request.method, request.url.path)
        return APIError(500, f"internal server error: {type(exc).__name__}", code="internal_error").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
