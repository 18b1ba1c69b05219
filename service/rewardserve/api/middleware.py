"""ASGI middleware: request body size limit (413) and per-route request metrics."""

from __future__ import annotations

import hmac
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import ApiKey
from ..errors import PayloadTooLarge, RewardServeError, Unauthorized
from ..metrics import Metrics
from .errors import error_parts

API_KEY_SCOPE = "rewardserve.api_key"  # the ASGI scope entry that holds the request's ApiKey


class BodyLimitMiddleware:
    """Reject bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                return await _send_413(send, self.max_bytes)
        seen = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge()
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_413(send, self.max_bytes)


class _BodyTooLarge(Exception):
    pass


async def _send_error(send: Send, exc: RewardServeError) -> None:
    """Answer with a domain error's row of the error table (api/errors.py), outside the app's handlers."""
    status, content, headers = error_parts(exc)
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_413(send: Send, limit: int) -> None:
    await _send_error(send, PayloadTooLarge(f"request body exceeds the limit (max_body_bytes) of {limit} bytes"))


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` on every route but ``open_routes``; keys compared in constant
    time (every key is compared, so timing does not tell which one nearly matched). Keys never
    appear in answers or logs. The matched key (its scope and sets) goes to the routes as
    ``scope[API_KEY_SCOPE]``, where each route checks what the key may do."""

    def __init__(self, app: ASGIApp, keys: list[ApiKey], open_routes: list[str]):
        self.app = app
        self.keys = [(k.key.encode(), k) for k in keys]
        self.open = set(open_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open:
            return await self.app(scope, receive, send)
        token = b""
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                scheme, _, rest = v.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip()
        matched = None
        for raw, key in self.keys:
            if hmac.compare_digest(token, raw) and matched is None:
                matched = key
        if matched is not None:
            scope[API_KEY_SCOPE] = matched
            return await self.app(scope, receive, send)
        msg = "missing API key: send 'Authorization: Bearer <key>'" if not token else "invalid API key"
        await _send_error(send, Unauthorized(msg))


class MetricsMiddleware:
    """Count requests by route template and status; observe latency per route."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.request_seconds.labels(path).observe(time.perf_counter() - t0)
