"""Request bodies read off the event loop when they are large, in pieces short enough that no
single call holds the GIL for long.

FastAPI parses a JSON body and validates it against the route's model on the event loop: for a
body of a few megabytes (hundreds of thousands of chat messages fit in ``max_body_bytes``) that
takes long enough to stall every other request, ``/healthz`` included. ``OffLoopBodyRoute`` parses
and validates bodies over ``OFF_LOOP_BODY_BYTES`` in the request's worker thread instead; FastAPI
then receives the validated model, which it passes through without a second validation.

A worker thread alone is not enough: ``json.loads``, and pydantic's ``model_validate_json``, each
turn a whole body into objects in one call into C or Rust, holding the GIL throughout (0.2 s for 16 MiB
of long string prompts, seconds for 600k chat messages), and the event loop waits for the GIL.
So the JSON is parsed in pieces (``json_pieces``), each element of the model's lists of objects
(``items``, ``entries``, ``references``) validated on its own, and a chat longer than
``limits.max_messages_per_prompt`` (or chats of more than ``max_messages_per_request``
together) refused before they are validated: the longest single call is then
one element's validation. Errors are FastAPI's own, as it gives them for a small body (422, located
under ``body``, in the same order), so answers do not depend on a body's size.
"""

from __future__ import annotations

import asyncio
import email.message
import functools
import json
import typing
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from ..config import LimitsConfig
from ..limits import check_messages
from . import json_pieces

OFF_LOOP_BODY_BYTES = 64 * 1024  # smaller bodies validate in well under a millisecond


def _is_json(request: Request) -> bool:
    ctype = request.headers.get("content-type")
    if not ctype:
        return True  # FastAPI reads a body without a content type as JSON too
    msg = email.message.Message()
    msg["content-type"] = ctype
    sub = msg.get_content_subtype()
    return msg.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


@functools.cache
def _object_lists(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The fields of ``model`` that are lists of models (field name → element model)."""
    out = {}
    for name, f in model.model_fields.items():
        args = typing.get_args(f.annotation)
        if typing.get_origin(f.annotation) is list and len(args) == 1 and isinstance(args[0], type):
            if issubclass(args[0], BaseModel) and f.alias is None:
                out[name] = args[0]
    return out


def _validate(model: type[BaseModel], raw: bytes, limits: LimitsConfig) -> BaseModel:
    """``raw`` parsed and validated as ``model``, in pieces; raises ``RequestValidationError`` (or
    ``HTTPException`` 400, ``TooManyMessages``) as FastAPI and the route would for a small body."""
    try:
        obj = json_pieces.loads(raw)
    except json.JSONDecodeError as e:  # FastAPI's answer to a body that is not JSON (fastapi.routing)
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", e.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": e.msg},
                }
            ],
            body=e.doc,
        ) from None
    except (ValueError, RecursionError):  # e.g. nesting too deep, an integer of too many digits
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from None
    lists = _object_lists(model)
    if not isinstance(obj, dict) or not lists:
        return _whole(model, obj)
    errors: list[Any] = []
    parts = dict(obj)
    for name, element in lists.items():
        value = obj.get(name)
        if not isinstance(value, list):
            continue
        check_messages(name, value, limits)
        validated: list[BaseModel] = []
        for i, el in enumerate(value):
            try:
                validated.append(element.model_validate(el))
            except ValidationError as e:
                errors += [{**err, "loc": (name, i, *err["loc"])} for err in e.errors(include_url=False)]
                validated.append(element.model_construct())  # a stand-in, so the rest still validates
        parts[name] = validated  # instances: the model takes them as they are (an isinstance check)
    try:
        result = model.model_validate(parts)
    except ValidationError as e:
        errors += e.errors(include_url=False)
    if not errors:
        return result
    # in the order of a whole validation: by field (the lists' elements first to last), then extra keys
    order = {name: k for k, name in enumerate(model.model_fields)}
    errors.sort(key=lambda err: order.get(err["loc"][0], len(order)) if err["loc"] else -1)
    raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors])


def _whole(model: type[BaseModel], obj: Any) -> BaseModel:
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


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
                    limits = request.app.state.rs.settings.limits
                    parsed = await asyncio.to_thread(_validate, body_model, raw, limits)
                    request._json = parsed  # what Request.json() returns: FastAPI takes it as the body
            return await handler(request)

        return route_handler
