"""Request bodies read off the event loop when they are large.

FastAPI parses a JSON body and validates it against the route's model on the event loop: for a
body of a few megabytes (hundreds of thousands of chat messages fit in ``max_body_bytes``) that
takes long enough to stall every other request, ``/healthz`` included. ``OffLoopBodyRoute`` parses
and validates bodies over ``OFF_LOOP_BODY_BYTES`` in the request's worker thread instead, with
pydantic's JSON validator; FastAPI then receives the validated model, which it passes through
without a second validation. Errors are FastAPI's own (422, located under ``body``), so answers do
not depend on a body's size.
"""

from __future__ import annotations

import asyncio
import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

OFF_LOOP_BODY_BYTES = 64 * 1024  # smaller bodies validate in well under a millisecond


def _is_json(request: Request) -> bool:
    ctype = request.headers.get("content-type")
    if not ctype:
        return True  # FastAPI reads a body without a content type as JSON too
    msg = email.message.Message()
    msg["content-type"] = ctype
    sub = msg.get_content_subtype()
    return msg.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


def _validate(model: type[BaseModel], raw: bytes) -> BaseModel:
    """``raw`` validated as ``model``. JSON that pydantic's parser refuses but Python's accepts (a lone
    surrogate escape such as ``"\\ud800"``) is validated from Python's parse, so that the error names
    the item, as it does for small bodies."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        if not any(err["type"] == "json_invalid" for err in e.errors()):
            raise
        try:
            obj = json.loads(raw)
        except ValueError:
            raise e from None
        return model.model_validate(obj)


class OffLoopBodyRoute(APIRoute):
    """An ``APIRoute`` whose large JSON body is parsed and validated in a worker thread."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        model: Any = getattr(field, "type_", None) if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return handler
        body_model: type[BaseModel] = model

        async def route_handler(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH") and _is_json(request):
                raw = await request.body()  # kept on the request: the handler reads the same bytes
                if len(raw) > OFF_LOOP_BODY_BYTES:
                    try:
                        parsed = await asyncio.to_thread(_validate, body_model, raw)
                    except ValidationError as e:
                        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
                        raise RequestValidationError(errors) from None
                    request._json = parsed  # what Request.json() returns: FastAPI takes it as the body
            return await handler(request)

        return route_handler
