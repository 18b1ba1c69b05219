"""Errors on the wire: every error body is ``{"error": {"type": str, "message": str}}``.

``ERRORS`` is the one table that maps the core's domain errors (``rewardserve.errors``) to an error
type and headers; a class without a row of its own takes its nearest base's row. The error types,
with their HTTP status and whether a retry may succeed, are defined once, in
``rewardclient.protocol`` (``ERROR_TYPES``), which the SDK reads too. The framework's own errors
(validation, unknown route, wrong method, an unhandled exception) are mapped below it. docs/api.md
lists the same table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rewardclient import protocol as p

from .. import errors as e

log = logging.getLogger("rewardserve.api")


@dataclass(frozen=True)
class HttpError:
    """How a domain error goes on the wire: ``message`` = ``prefix`` + the error's own message;
    ``Retry-After`` = the error's ``retry_after`` (rounded up) if it has one, else ``retry_after``."""

    type: p.ErrorType
    prefix: str = ""
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return self.type.status


ERRORS: dict[type[e.RewardServeError], HttpError] = {
    e.InvalidInput: HttpError(p.INVALID_REQUEST),
    e.PromptFormatError: HttpError(p.INVALID_PROMPT_FORMAT),
    e.MissingReference: HttpError(p.MISSING_REFERENCE),
    e.StaleReference: HttpError(p.STALE_REFERENCE),
    e.MissingLabel: HttpError(p.MISSING_LABEL),
    e.UnknownModel: HttpError(p.MODEL_NOT_FOUND),
    e.ReferenceNotFound: HttpError(p.REFERENCE_NOT_FOUND),
    e.ReferenceSetNotFound: HttpError(p.REFERENCE_SET_NOT_FOUND),
    e.TooManyItems: HttpError(p.TOO_MANY_ITEMS),
    e.TextTooLong: HttpError(p.TEXT_TOO_LONG),
    e.TooManyModels: HttpError(p.TOO_MANY_MODELS),
    e.TooManyReferences: HttpError(p.TOO_MANY_REFERENCES),
    e.TooManySamples: HttpError(p.TOO_MANY_SAMPLES),
    e.PayloadTooLarge: HttpError(p.PAYLOAD_TOO_LARGE),
    e.Unauthorized: HttpError(p.UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}),
    e.Forbidden: HttpError(p.FORBIDDEN),
    e.ClientGone: HttpError(p.CLIENT_CLOSED_REQUEST),
    e.ModelFailed: HttpError(p.MODEL_ERROR),
    e.NotReady: HttpError(p.NOT_READY, retry_after=5),
    e.LoadFailed: HttpError(p.LOAD_FAILED),
    e.NotLive: HttpError(p.NOT_LIVE),
    e.Overloaded: HttpError(p.OVERLOADED),
    e.StoreUnavailable: HttpError(p.REFERENCE_STORE_UNAVAILABLE, "reference store unavailable: ", retry_after=2),
    e.StoreFull: HttpError(p.REFERENCE_STORE_FULL, "reference store full: ", retry_after=30),
}


def http_error(exc: e.RewardServeError) -> HttpError:
    """The row of ``exc``'s class, or of its nearest base that has one."""
    for cls in type(exc).__mro__:
        row = ERRORS.get(cls) if issubclass(cls, e.RewardServeError) else None
        if row is not None:
            return row
    raise LookupError(f"no HTTP mapping for {type(exc).__name__}")  # every domain error has one (tests)


def error_parts(exc: e.RewardServeError) -> tuple[int, dict[str, dict[str, str]], dict[str, str]]:
    """``(status, body, headers)`` of a domain error."""
    row = http_error(exc)
    headers = dict(row.headers)
    seconds = exc.retry_after if exc.retry_after is not None else row.retry_after
    if seconds is not None:
        headers["Retry-After"] = str(math.ceil(seconds))
    return row.status, {"error": {"type": row.type.name, "message": row.prefix + str(exc)}}, headers


def error_response(
    status: int, type: p.ErrorType | str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    name = type.name if isinstance(type, p.ErrorType) else type
    return JSONResponse({"error": {"type": name, "message": message}}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 10
    text = "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate in a key: shown escaped


# the framework's own errors
_STATUS_TYPES = {
    t.status: t for t in (p.NOT_FOUND, p.METHOD_NOT_ALLOWED, p.PAYLOAD_TOO_LARGE, p.UNSUPPORTED_MEDIA_TYPE)
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.RewardServeError)
    async def _domain(_: Request, exc: e.RewardServeError) -> JSONResponse:
        status, body, headers = error_parts(exc)
        return JSONResponse(body, status_code=status, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, p.INVALID_REQUEST, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. invalid UTF-8): bad input, like any other
            return error_response(422, p.INVALID_REQUEST, "the body could not be parsed: send UTF-8 encoded JSON")
        return error_response(
            exc.status_code, _STATUS_TYPES.get(exc.status_code, "http_error"), str(exc.detail), exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, p.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
