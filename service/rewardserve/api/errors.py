"""Errors on the wire: every error body is ``{"error": {"type": str, "message": str}}``.

``ERRORS`` is the one table that maps the core's domain errors (``rewardserve.errors``) to an HTTP
status, an error type and headers; a class without a row of its own takes its nearest base's row.
The framework's own errors (validation, unknown route, wrong method, an unhandled exception) are
mapped below it. docs/api.md lists the same table.
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

from .. import errors as e

log = logging.getLogger("rewardserve.api")


@dataclass(frozen=True)
class HttpError:
    """How a domain error goes on the wire: ``message`` = ``prefix`` + the error's own message;
    ``Retry-After`` = the error's ``retry_after`` (rounded up) if it has one, else ``retry_after``."""

    status: int
    type: str
    prefix: str = ""
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


ERRORS: dict[type[e.RewardServeError], HttpError] = {
    e.InvalidInput: HttpError(422, "invalid_request"),
    e.PromptFormatError: HttpError(422, "invalid_prompt_format"),
    e.MissingReference: HttpError(422, "missing_reference"),
    e.StaleReference: HttpError(422, "stale_reference"),
    e.UnknownModel: HttpError(404, "model_not_found"),
    e.ReferenceNotFound: HttpError(404, "reference_not_found"),
    e.ReferenceSetNotFound: HttpError(404, "reference_set_not_found"),
    e.TooManyItems: HttpError(413, "too_many_items"),
    e.TextTooLong: HttpError(413, "text_too_long"),
    e.TooManyModels: HttpError(413, "too_many_models"),
    e.TooManyReferences: HttpError(413, "too_many_references"),
    e.TooManySamples: HttpError(413, "too_many_samples"),
    e.PayloadTooLarge: HttpError(413, "payload_too_large"),
    e.Unauthorized: HttpError(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"}),
    e.Forbidden: HttpError(403, "forbidden"),
    e.ClientGone: HttpError(499, "client_closed_request"),
    e.ModelFailed: HttpError(500, "model_error"),
    e.NotReady: HttpError(503, "not_ready", retry_after=5),
    e.NotLive: HttpError(503, "not_live"),
    e.Overloaded: HttpError(503, "overloaded"),
    e.StoreUnavailable: HttpError(503, "reference_store_unavailable", "reference store unavailable: ", retry_after=2),
    e.StoreFull: HttpError(503, "reference_store_full", "reference store full: ", retry_after=30),
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
    return row.status, {"error": {"type": row.type, "message": row.prefix + str(exc)}}, headers


def error_response(status: int, type: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": type, "message": message}}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 10
    text = "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate in a key: shown escaped


# the framework's own errors
_STATUS_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.RewardServeError)
    async def _domain(_: Request, exc: e.RewardServeError) -> JSONResponse:
        status, body, headers = error_parts(exc)
        return JSONResponse(body, status_code=status, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. invalid UTF-8): bad input, like any other
            return error_response(422, "invalid_request", "the body could not be parsed: send UTF-8 encoded JSON")
        return error_response(
            exc.status_code, _STATUS_TYPES.get(exc.status_code, "http_error"), str(exc.detail), exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")
