"""``RewardClient`` (sync) and ``AsyncRewardClient`` over httpx, sharing one request builder.

- Large batches are split into chunks of at most ``max_items_per_request`` items and sent with
  bounded concurrency (``max_concurrency``); results come back in request order.
- Retries with jittered exponential backoff only on transient failures (connection errors and
  timeouts, 429, 502, 503, 504), honouring ``Retry-After``; never on other 4xx.
- Errors are typed: ``RewardServeError`` subclasses carry the server's error type and message.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

Prompt = str | Sequence[Mapping[str, str]]
RETRY_STATUS = frozenset({429, 502, 503, 504})


class RewardServeError(Exception):
    """An error answer of the service (or no answer at all)."""

    def __init__(self, status: int | None, type: str, message: str):
        super().__init__(f"[{status} {type}] {message}" if status else f"[{type}] {message}")
        self.status, self.type, self.message = status, type, message


class BadRequestError(RewardServeError):
    """422/400: the request is invalid; retrying will not help."""


class NotFoundError(RewardServeError):
    """404: unknown model, route or reference."""


class PayloadTooLargeError(RewardServeError):
    """413: a server limit was exceeded."""


class AuthenticationError(RewardServeError):
    """401/403: missing or wrong API key."""


class OverloadedError(RewardServeError):
    """429/503 after every retry."""


class ServerError(RewardServeError):
    """5xx (e.g. a model's forward failed)."""


class ConnectionFailed(RewardServeError):
    """No answer: connection refused, reset or timed out (after every retry)."""


_BY_STATUS = {400: BadRequestError, 422: BadRequestError, 404: NotFoundError, 413: PayloadTooLargeError,
              401: AuthenticationError, 403: AuthenticationError, 429: OverloadedError, 503: OverloadedError}


def error_from_response(r: httpx.Response) -> RewardServeError:
    try:
        err = r.json()["error"]
        etype, msg = str(err["type"]), str(err["message"])
    except Exception:
        etype, msg = "http_error", r.text[:500]
    cls = _BY_STATUS.get(r.status_code, ServerError if r.status_code >= 500 else RewardServeError)
    return cls(r.status_code, etype, msg)


@dataclass(frozen=True)
class ScoreResult:
    id: str | None
    raw: dict[str, float]
    reference: dict[str, float]
    transformed: dict[str, float]
    aggregate: float
    truncated: dict[str, bool]
    p_all_good: float | None = None
    warnings: tuple[str, ...] = ()
    # per model: "inline" | "stored" | "set_default" | "config_default" (empty from servers before 0.2)
    reference_source: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScoreResult:
        return cls(id=d.get("id"), raw=d["raw"], reference=d["reference"], transformed=d["transformed"],
                   aggregate=d["aggregate"], truncated=d["truncated"], p_all_good=d.get("p_all_good"),
                   warnings=tuple(d.get("warnings") or ()), reference_source=dict(d.get("reference_source") or {}))


def make_item(item: Mapping[str, Any] | tuple) -> dict[str, Any]:
    """An item as the API wants it, from a mapping or a ``(prompt, response)`` tuple."""
    if isinstance(item, tuple):
        prompt, response = item
        return {"prompt": _prompt(prompt), "response": response}
    out = {"prompt": _prompt(item["prompt"]), "response": item["response"]}
    for k in ("id", "reference"):
        if item.get(k) is not None:
            out[k] = item[k]
    return out


def _prompt(p: Prompt) -> Any:
    return p if isinstance(p, str) else [{"role": m["role"], "content": m["content"]} for m in p]


class _RequestBuilder:
    """Everything both clients share: URLs, headers, bodies, chunking, retry decisions."""

    def __init__(self, base_url: str, api_key: str | None, max_items_per_request: int, max_retries: int,
                 backoff_base: float, backoff_max: float):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_items = max_items_per_request
        self.max_retries, self.backoff_base, self.backoff_max = max_retries, backoff_base, backoff_max

    def score_bodies(self, items: Sequence[Any], models: Sequence[str] | None, aggregate: Mapping[str, Any] | None,
                     reference_set: str | None = None, prompt_format: str | None = None) -> list[dict]:
        items = [make_item(it) for it in items]
        if not items:
            raise ValueError("items is empty")
        bodies = []
        for s in range(0, len(items), self.max_items):
            body: dict[str, Any] = {"items": items[s:s + self.max_items]}
            if models:
                body["models"] = list(models)
            if aggregate:
                body["aggregate"] = dict(aggregate)
            if reference_set is not None:
                body["reference_set"] = reference_set
            if prompt_format is not None:
                body["prompt_format"] = prompt_format
            bodies.append(body)
        return bodies

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            ra = response.headers.get("retry-after")
            if ra:
                try:
                    return min(float(ra), self.backoff_max)
                except ValueError:
                    pass
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** attempt))  # full jitter

    def should_retry(self, attempt: int, response: httpx.Response | None) -> bool:
        return attempt < self.max_retries and (response is None or response.status_code in RETRY_STATUS)


class RewardClient:
    """Synchronous client. ``with RewardClient("http://host:8000") as rc: rc.score([...])``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 connect_timeout: float = 5.0, read_timeout: float = 120.0, max_retries: int = 5,
                 backoff_base: float = 0.25, backoff_max: float = 20.0, max_items_per_request: int = 256,
                 max_concurrency: int = 4, transport: httpx.BaseTransport | None = None):
        self._b = _RequestBuilder(base_url, api_key, max_items_per_request, max_retries, backoff_base, backoff_max)
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._http = httpx.Client(base_url=self._b.base_url, headers=self._b.headers, timeout=timeout, transport=transport)
        self.max_concurrency = max_concurrency

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw) -> Any:
        attempt = 0
        while True:
            response = None
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError as e:
                if not self._b.should_retry(attempt, None):
                    raise ConnectionFailed(None, type(e).__name__, f"{method} {path}: {e}") from e
            else:
                if response.status_code < 400:
                    return response.json()
                if not self._b.should_retry(attempt, response):
                    raise error_from_response(response)
            time.sleep(self._b.delay(attempt, response))
            attempt += 1

    def score(self, items: Sequence[Any], models: Sequence[str] | None = None,
              aggregate: Mapping[str, Any] | None = None, reference_set: str | None = None,
              prompt_format: str | None = None) -> list[ScoreResult]:
        """Score items (mappings with prompt/response[/id/reference] or (prompt, response) tuples).
        ``reference_set``: the named set of stored references to use (default: the service's);
        ``prompt_format``: how string prompts are read (default: the service's, ``auto``)."""
        bodies = self._b.score_bodies(items, models, aggregate, reference_set, prompt_format)
        if len(bodies) == 1:
            answers = [self._request("POST", "/v1/score", json=bodies[0])]
        else:
            with ThreadPoolExecutor(min(self.max_concurrency, len(bodies))) as ex:
                answers = list(ex.map(lambda b: self._request("POST", "/v1/score", json=b), bodies))
        return [ScoreResult.from_json(r) for a in answers for r in a["results"]]

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/models")["models"]

    def health(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def put_references(self, model: str, values: Mapping[Any, float] | Iterable[tuple[Prompt, float]] | None = None, *,
                       samples: Iterable[tuple[Prompt, Sequence[str]]] | None = None, quantile: float | None = None,
                       policy: str | None = None, default: float | None = None, n_samples: int | None = None,
                       reference_set: str | None = None) -> dict:
        """Store references into ``reference_set`` (default: the service's ``default`` set):
        ``values`` as (prompt, value) pairs, and/or ``samples`` as (prompt, [responses]) for the
        server to score and reduce to their ``quantile``."""
        return self._request("POST", "/v1/references", json=references_body(model, values, samples, quantile, policy, default,
                                                                             n_samples, reference_set))

    def get_reference(self, model: str, prompt: Prompt, reference_set: str | None = None) -> dict | None:
        from .fingerprint import prompt_fingerprint

        params = {"model": model, "prompt_fingerprint": prompt_fingerprint(prompt)}
        if reference_set is not None:
            params["reference_set"] = reference_set
        try:
            return self._request("GET", "/v1/references", params=params)
        except NotFoundError as e:
            if e.type == "reference_not_found":
                return None
            raise

    def lookup_references(self, model: str, fingerprints: Sequence[str], reference_set: str | None = None) -> dict:
        return self._request("POST", "/v1/references/lookup", json=lookup_body(model, fingerprints, reference_set))


def lookup_body(model: str, fingerprints: Sequence[str], reference_set: str | None) -> dict:
    body: dict[str, Any] = {"model": model, "prompt_fingerprints": list(fingerprints)}
    if reference_set is not None:
        body["reference_set"] = reference_set
    return body


def references_body(model, values, samples, quantile, policy, default, n_samples, reference_set=None) -> dict:
    entries = []
    for prompt, value in (values.items() if isinstance(values, Mapping) else values or []):
        e = {"prompt": _prompt(prompt), "value": float(value)}
        if n_samples:
            e["n_samples"] = n_samples
        entries.append(e)
    for prompt, ss in samples or []:
        entries.append({"prompt": _prompt(prompt), "samples": list(ss)})
    body: dict[str, Any] = {"model": model, "entries": entries}
    if quantile is not None:
        body["quantile"] = quantile
    if policy is not None:
        body["policy"] = policy
    if default is not None:
        body["default"] = {"value": float(default), **({"n_samples": n_samples} if n_samples else {})}
    if reference_set is not None:
        body["reference_set"] = reference_set
    return body


class AsyncRewardClient:
    """Asynchronous client with the same methods as ``RewardClient`` (awaitable)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 connect_timeout: float = 5.0, read_timeout: float = 120.0, max_retries: int = 5,
                 backoff_base: float = 0.25, backoff_max: float = 20.0, max_items_per_request: int = 256,
                 max_concurrency: int = 4, transport: httpx.AsyncBaseTransport | None = None):
        self._b = _RequestBuilder(base_url, api_key, max_items_per_request, max_retries, backoff_base, backoff_max)
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._http = httpx.AsyncClient(base_url=self._b.base_url, headers=self._b.headers, timeout=timeout, transport=transport)
        self._sem = asyncio.Semaphore(max_concurrency)

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw) -> Any:
        attempt = 0
        while True:
            response = None
            try:
                async with self._sem:
                    response = await self._http.request(method, path, **kw)
            except httpx.TransportError as e:
                if not self._b.should_retry(attempt, None):
                    raise ConnectionFailed(None, type(e).__name__, f"{method} {path}: {e}") from e
            else:
                if response.status_code < 400:
                    return response.json()
                if not self._b.should_retry(attempt, response):
                    raise error_from_response(response)
            await asyncio.sleep(self._b.delay(attempt, response))
            attempt += 1

    async def score(self, items: Sequence[Any], models: Sequence[str] | None = None,
                    aggregate: Mapping[str, Any] | None = None, reference_set: str | None = None,
                    prompt_format: str | None = None) -> list[ScoreResult]:
        bodies = self._b.score_bodies(items, models, aggregate, reference_set, prompt_format)
        answers = await asyncio.gather(*(self._request("POST", "/v1/score", json=b) for b in bodies))
        return [ScoreResult.from_json(r) for a in answers for r in a["results"]]

    async def models(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/models"))["models"]

    async def health(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def put_references(self, model: str, values=None, *, samples=None, quantile=None, policy=None, default=None,
                             n_samples=None, reference_set=None) -> dict:
        return await self._request("POST", "/v1/references", json=references_body(model, values, samples, quantile, policy, default,
                                                                                   n_samples, reference_set))

    async def lookup_references(self, model: str, fingerprints: Sequence[str], reference_set: str | None = None) -> dict:
        return await self._request("POST", "/v1/references/lookup", json=lookup_body(model, fingerprints, reference_set))
