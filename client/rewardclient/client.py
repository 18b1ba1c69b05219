"""``RewardClient`` (sync) and ``AsyncRewardClient`` over httpx, on one shared base.

``_BaseClient`` builds every call (method, path, body, how to read the answer) and holds the one
retry policy (``RetryPolicy``, a loop free of I/O); each client only sends, sleeps and gathers in
its own I/O style, so the two have the same methods by construction.

- Large batches are split into chunks of at most ``max_items_per_request`` items and about
  ``max_tokens_per_request`` tokens (estimated as characters / 4: about right for English with
  Llama-, Qwen- or GPT-style tokenizers; a chunk always holds at least one item) and sent with
  bounded concurrency (``max_concurrency``); results come back in request order.
- Retries with jittered exponential backoff only on transient failures, honouring ``Retry-After``:
  connection errors and timeouts, and answers whose error type is retryable
  (``protocol.ERROR_TYPES``: ``overloaded``, ``not_ready``, a reference store briefly unavailable);
  an answer without a known type (a proxy's) only on 429, 502, 503, 504. Never on ``load_failed``
  (a model failed to load: only an operator helps) nor on invalid input. A service that answers
  retryable 429 or 503 is retried past ``max_retries`` until ``patience`` seconds have passed since
  the first try: a GPU service answers a full queue with a ``Retry-After`` of several seconds, and
  one full batch of long items takes tens of seconds.
- Errors are typed by the server's error type (not its status): ``ERROR_CLASSES`` names the
  ``RewardServeError`` subclass of each; it carries the type, message and status.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import httpx

from . import protocol as p
from .protocol import PromptLike, ReferenceSource, plain_prompt, prompt_fingerprint

T = TypeVar("T")
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
RETRY_STATUS = frozenset({429, 502, 503, 504})  # answers without a known error type (a proxy's) that are retried


class RewardServeError(Exception):
    """An error answer of the service (or no answer at all); ``retryable``: whether the same request
    may succeed when tried again (the retry policy already did, up to ``max_retries``)."""

    def __init__(self, status: int | None, type: str, message: str, retryable: bool = False):
        super().__init__(f"[{status} {type}] {message}" if status else f"[{type}] {message}")
        self.status, self.type, self.message, self.retryable = status, type, message, retryable


class BadRequestError(RewardServeError):
    """422 (400, 405, 415): the request is invalid (malformed, a missing reference, …); retrying will not help."""


class AuthenticationError(RewardServeError):
    """401: no API key, or an unknown one."""


class PermissionDeniedError(RewardServeError):
    """403: the API key may not do this (its scope, or the reference sets it may use)."""


class NotFoundError(RewardServeError):
    """404: unknown model, route, reference or reference set."""


class PayloadTooLargeError(RewardServeError):
    """413: a server limit was exceeded (the message names it)."""


class ServerError(RewardServeError):
    """5xx: a model's forward failed, or an internal error."""


class ServiceUnavailableError(ServerError):
    """503: the service cannot serve now: models loading or failed to load (``load_failed``), the
    reference store unreachable or full, … (after every retry, where retrying may help)."""


class OverloadedError(ServiceUnavailableError):
    """503 ``overloaded`` (or 429): the queue is full, after every retry."""


class ConnectionFailed(RewardServeError):
    """No answer: connection refused, reset or timed out (after every retry)."""


# every error type of the protocol → its exception class
ERROR_CLASSES: dict[str, type[RewardServeError]] = {
    p.INVALID_REQUEST.name: BadRequestError,
    p.INVALID_PROMPT_FORMAT.name: BadRequestError,
    p.MISSING_REFERENCE.name: BadRequestError,
    p.STALE_REFERENCE.name: BadRequestError,
    p.MISSING_LABEL.name: BadRequestError,
    p.METHOD_NOT_ALLOWED.name: BadRequestError,
    p.UNSUPPORTED_MEDIA_TYPE.name: BadRequestError,
    p.UNAUTHORIZED.name: AuthenticationError,
    p.FORBIDDEN.name: PermissionDeniedError,
    p.MODEL_NOT_FOUND.name: NotFoundError,
    p.REFERENCE_NOT_FOUND.name: NotFoundError,
    p.REFERENCE_SET_NOT_FOUND.name: NotFoundError,
    p.NOT_FOUND.name: NotFoundError,
    p.TOO_MANY_ITEMS.name: PayloadTooLargeError,
    p.TEXT_TOO_LONG.name: PayloadTooLargeError,
    p.TOO_MANY_MODELS.name: PayloadTooLargeError,
    p.TOO_MANY_REFERENCES.name: PayloadTooLargeError,
    p.TOO_MANY_SAMPLES.name: PayloadTooLargeError,
    p.PAYLOAD_TOO_LARGE.name: PayloadTooLargeError,
    p.CLIENT_CLOSED_REQUEST.name: RewardServeError,
    p.MODEL_ERROR.name: ServerError,
    p.INTERNAL_ERROR.name: ServerError,
    p.NOT_READY.name: ServiceUnavailableError,
    p.LOAD_FAILED.name: ServiceUnavailableError,
    p.NOT_LIVE.name: ServiceUnavailableError,
    p.OVERLOADED.name: OverloadedError,
    p.REFERENCE_STORE_UNAVAILABLE.name: ServiceUnavailableError,
    p.REFERENCE_STORE_FULL.name: ServiceUnavailableError,
}
# an answer without a known error type (e.g. a proxy's 502 page): by status
_BY_STATUS: dict[int, type[RewardServeError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: OverloadedError,
    503: ServiceUnavailableError,
}


def error_from_response(r: httpx.Response) -> RewardServeError:
    """The typed error of an answer: by its error type, or by status when it has no known type."""
    try:
        err = r.json()["error"]
        etype, msg = str(err["type"]), str(err["message"])
    except Exception:
        etype, msg = "http_error", r.text[:500]
    known = p.ERROR_TYPES.get(etype)
    if known is not None:
        return ERROR_CLASSES[etype](r.status_code, etype, msg, known.retryable)
    cls = _BY_STATUS.get(r.status_code, ServerError if r.status_code >= 500 else RewardServeError)
    return cls(r.status_code, etype, msg, r.status_code in RETRY_STATUS)


@dataclass(frozen=True)
class ScoreResult:
    id: str | None
    raw: dict[str, float]  # NaN: the model was left out of this item (the wire's null: a check without its label)
    reference: dict[str, float]
    transformed: dict[str, float]  # NaN where raw is
    aggregate: float
    truncated: dict[str, bool]
    p_all_good: float | None = None
    warnings: tuple[str, ...] = ()
    # per model, where its reference came from (empty from servers before 0.2)
    reference_source: dict[str, ReferenceSource] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScoreResult:
        return cls(
            id=d.get("id"),
            raw=_floats(d["raw"]),
            reference=d["reference"],
            transformed=_floats(d["transformed"]),
            aggregate=d["aggregate"],
            truncated=d["truncated"],
            p_all_good=d.get("p_all_good"),
            warnings=tuple(d.get("warnings") or ()),
            reference_source=dict(d.get("reference_source") or {}),
        )


def _floats(values: Mapping[str, float | None]) -> dict[str, float]:
    """Per-model values with the wire's null (a model left out of the item) as NaN."""
    return {m: math.nan if v is None else v for m, v in values.items()}


def make_item(item: Mapping[str, Any] | tuple[PromptLike, str]) -> dict[str, Any]:
    """An item as the API wants it, from a mapping or a ``(prompt, response)`` tuple."""
    if isinstance(item, tuple):
        prompt, response = item
        return {"prompt": plain_prompt(prompt), "response": response}
    out = {"prompt": plain_prompt(item["prompt"]), "response": item["response"]}
    for k in ("id", "reference", "label"):  # label: ground truth for checks (any JSON value)
        if item.get(k) is not None:
            out[k] = item[k]
    return out


Outcome = httpx.Response | httpx.TransportError | None  # of one try (None: after a wait)
References = Mapping[Any, float] | Iterable[tuple[PromptLike, float]]  # prompt → value
Samples = Iterable[tuple[PromptLike, Sequence[str]]]  # (prompt, base-policy responses)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with full-jitter exponential backoff, only on transient failures (connection errors
    and timeouts, answers whose error is ``retryable``), honouring ``Retry-After`` (at most ``backoff_max``)."""

    max_retries: int = 5
    backoff_base: float = 0.25
    backoff_max: float = 20.0
    patience: float = 120.0  # seconds an overloaded service (429/503) is retried, whatever max_retries

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            ra = response.headers.get("retry-after")
            if ra:
                try:
                    return min(float(ra), self.backoff_max)
                except ValueError:
                    pass
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))  # full jitter

    def should_retry(self, attempt: int, error: RewardServeError | None, elapsed: float = 0.0) -> bool:
        """Whether to try again after ``attempt`` tries ended in ``error`` (None: no answer at all),
        ``elapsed`` seconds after the first: up to ``max_retries`` for any transient failure, then on
        while an overloaded service (retryable 429 or 503) has kept us waiting less than ``patience``."""
        if error is not None and not error.retryable:
            return False
        if attempt < self.max_retries:
            return True
        return error is not None and error.status in (429, 503) and elapsed < self.patience

    def attempts(self, method: str, path: str) -> Generator[float | None, Outcome, httpx.Response]:
        """The retry loop, free of I/O. It yields ``None`` for "send the request" (send it back the
        response, or the ``httpx.TransportError``) and a number for "wait this many seconds" (send it
        back ``None``); it returns the first answer below 400 and raises the typed error on giving up."""
        attempt, start = 0, time.monotonic()
        while True:
            outcome = yield None
            response = outcome if isinstance(outcome, httpx.Response) else None
            if response is None:
                if not self.should_retry(attempt, None):
                    cause = outcome if isinstance(outcome, httpx.TransportError) else None
                    raise ConnectionFailed(None, type(outcome).__name__, f"{method} {path}: {outcome}") from cause
            elif response.status_code < 400:
                return response
            else:
                error = error_from_response(response)
                if not self.should_retry(attempt, error, time.monotonic() - start):
                    raise error
            wait = self.delay(attempt, response)
            yield wait if attempt < self.max_retries else max(wait, self.backoff_base)  # patience: never spin
            attempt += 1


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call: what to send, and how its JSON answer becomes the method's result."""

    method: str
    path: str
    read: Callable[[Any], T]
    json: Any = None
    params: dict[str, str] | None = None
    absent: str | None = None  # the 404 error type meaning "no such entry": the result is None


class _BaseClient(Generic[HttpT]):
    """What both clients share: options, headers, the retry policy, and every call they make."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        max_retries: int = 5,
        backoff_base: float = 0.25,
        backoff_max: float = 20.0,
        max_items_per_request: int = 256,
        max_concurrency: int = 4,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        max_tokens_per_request: int = 65_536,
        patience: float = 120.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(max_retries, backoff_base, backoff_max, patience)
        self.max_items_per_request, self.max_concurrency = max_items_per_request, max_concurrency
        self.max_tokens_per_request = max_tokens_per_request
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http: HttpT = self._make_http(headers, httpx.Timeout(read_timeout, connect=connect_timeout), transport)

    def _make_http(self, headers: dict[str, str], timeout: httpx.Timeout, transport: Any) -> HttpT:
        raise NotImplementedError

    def _exchange(self, call: _Call[T]) -> Generator[float | None, Outcome, T]:
        """``RetryPolicy.attempts`` for ``call``, then its answer read into the result."""
        try:
            response = yield from self.retry.attempts(call.method, call.path)
        except NotFoundError as e:
            if call.absent is None or e.type != call.absent:
                raise
            return cast(T, None)
        return call.read(response.json())

    # -- the calls ----------------------------------------------------------------------------------
    def _score_calls(
        self,
        items: Sequence[Any],
        models: Sequence[str] | None,
        aggregate: Mapping[str, Any] | None,
        reference_set: str | None = None,
        prompt_format: str | None = None,
    ) -> list[_Call[list[ScoreResult]]]:
        """One call per chunk of at most ``max_items_per_request`` items and about
        ``max_tokens_per_request`` tokens (``chunk_by_tokens``)."""
        items = [make_item(it) for it in items]
        if not items:
            raise ValueError("items is empty")
        options: dict[str, Any] = {
            "models": list(models) if models else None,
            "aggregate": dict(aggregate) if aggregate else None,
            "reference_set": reference_set,
            "prompt_format": prompt_format,
        }
        options = {k: v for k, v in options.items() if v is not None}
        spans = chunk_by_tokens(
            [estimate_tokens(it) for it in items], self.max_items_per_request, self.max_tokens_per_request
        )
        return [_Call("POST", "/v1/score", _score_results, json={"items": items[a:b], **options}) for a, b in spans]

    def _models_call(self) -> _Call[list[dict[str, Any]]]:
        return _Call("GET", "/v1/models", lambda answer: answer["models"])

    def _put_references_call(
        self,
        model: str,
        values: References | None,
        samples: Samples | None,
        quantile: float | None,
        policy: str | None,
        default: float | None,
        n_samples: int | None,
        reference_set: str | None,
    ) -> _Call[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for prompt, value in values.items() if isinstance(values, Mapping) else values or []:
            entry = {"prompt": plain_prompt(prompt), "value": float(value)}
            entries.append({**entry, "n_samples": n_samples} if n_samples else entry)
        for prompt, ss in samples or []:
            entries.append({"prompt": plain_prompt(prompt), "samples": list(ss)})
        body: dict[str, Any] = {"model": model, "entries": entries}
        if quantile is not None:
            body["quantile"] = quantile
        if policy is not None:
            body["policy"] = policy
        if default is not None:
            body["default"] = {"value": float(default), **({"n_samples": n_samples} if n_samples else {})}
        if reference_set is not None:
            body["reference_set"] = reference_set
        return _Call("POST", "/v1/references", _as_is, json=body)

    def _get_reference_call(
        self, model: str, prompt: PromptLike, reference_set: str | None
    ) -> _Call[dict[str, Any] | None]:
        params = {"model": model, "prompt_fingerprint": prompt_fingerprint(prompt)}
        if reference_set is not None:
            params["reference_set"] = reference_set
        return _Call("GET", "/v1/references", _as_is, params=params, absent="reference_not_found")

    def _lookup_references_call(
        self, model: str, fingerprints: Sequence[str], reference_set: str | None
    ) -> _Call[dict[str, Any]]:
        body: dict[str, Any] = {"model": model, "prompt_fingerprints": list(fingerprints)}
        if reference_set is not None:
            body["reference_set"] = reference_set
        return _Call("POST", "/v1/references/lookup", _as_is, json=body)


CHARS_PER_TOKEN = 4  # the estimate of chunk_by_tokens: English text with a BPE tokenizer of 32k-150k tokens


def estimate_tokens(item: Mapping[str, Any]) -> int:
    """About how many tokens an API item is (characters of its prompt and response / 4; the
    server's tokenizer and template decide the real count)."""
    prompt = item["prompt"]
    chars = len(prompt) if isinstance(prompt, str) else sum(len(str(m.get("content", ""))) + 8 for m in prompt)
    return (chars + len(item["response"])) // CHARS_PER_TOKEN + 1


def chunk_by_tokens(tokens: Sequence[int], max_items: int, max_tokens: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive chunks with at most ``max_items`` items and at most ``max_tokens``
    estimated tokens each (an item larger than that alone is a chunk of its own)."""
    spans: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, t in enumerate(tokens):
        if i > start and (i - start >= max_items or total + t > max_tokens):
            spans.append((start, i))
            start, total = i, 0
        total += t
    if tokens:
        spans.append((start, len(tokens)))
    return spans


def _score_results(answer: Mapping[str, Any]) -> list[ScoreResult]:
    return [ScoreResult.from_json(r) for r in answer["results"]]


def _as_is(answer: Any) -> Any:
    return answer


class RewardClient(_BaseClient[httpx.Client]):
    """Synchronous client. ``with RewardClient("http://host:8000") as rc: rc.score([...])``.

    Options: ``api_key``; ``connect_timeout`` / ``read_timeout`` (seconds); ``max_retries``,
    ``backoff_base``, ``backoff_max``, ``patience`` (``RetryPolicy``); ``max_items_per_request`` and
    ``max_tokens_per_request`` (larger batches are split; tokens estimated as characters / 4) and
    ``max_concurrency`` (chunks in flight at once); ``transport`` (an httpx transport)."""

    def _make_http(self, headers: dict[str, str], timeout: httpx.Timeout, transport: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[Any]) -> Outcome:
        try:
            return self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as e:
            return e

    def _run(self, call: _Call[T]) -> T:
        exchange = self._exchange(call)
        step = next(exchange)
        while True:
            outcome: Outcome = None  # a wait's outcome is None
            if step is None:
                outcome = self._send(call)
            else:
                time.sleep(step)
            try:
                step = exchange.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result

    def score(
        self,
        items: Sequence[Any],
        models: Sequence[str] | None = None,
        aggregate: Mapping[str, Any] | None = None,
        reference_set: str | None = None,
        prompt_format: str | None = None,
    ) -> list[ScoreResult]:
        """Score items (mappings with prompt/response[/id/reference/label] or (prompt, response) tuples), in order.
        ``aggregate``: ``{"method": ..., "weights": ...}``; ``reference_set``: the named set of stored
        references to use (default: the service's); ``prompt_format``: how string prompts are read
        (default: the service's, ``auto``)."""
        calls = self._score_calls(items, models, aggregate, reference_set, prompt_format)
        if len(calls) == 1:
            return self._run(calls[0])
        with ThreadPoolExecutor(min(self.max_concurrency, len(calls))) as ex:
            return [r for chunk in ex.map(self._run, calls) for r in chunk]

    def models(self) -> list[dict[str, Any]]:
        """The served models (``GET /v1/models``)."""
        return self._run(self._models_call())

    def health(self) -> bool:
        """Whether the service is ready (``/readyz``); no retries."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def put_references(
        self,
        model: str,
        values: References | None = None,
        *,
        samples: Samples | None = None,
        quantile: float | None = None,
        policy: str | None = None,
        default: float | None = None,
        n_samples: int | None = None,
        reference_set: str | None = None,
    ) -> dict[str, Any]:
        """Store references into ``reference_set`` (default: the service's ``default`` set):
        ``values`` as (prompt, value) pairs, and/or ``samples`` as (prompt, [responses]) for the
        server to score and reduce to their ``quantile``; ``default``: the model's default reference."""
        call = self._put_references_call(model, values, samples, quantile, policy, default, n_samples, reference_set)
        return self._run(call)

    def get_reference(self, model: str, prompt: PromptLike, reference_set: str | None = None) -> dict[str, Any] | None:
        """The stored reference of ``prompt`` for ``model``, or ``None`` when there is none."""
        return self._run(self._get_reference_call(model, prompt, reference_set))

    def lookup_references(
        self, model: str, fingerprints: Sequence[str], reference_set: str | None = None
    ) -> dict[str, Any]:
        """Stored references by prompt fingerprint (``POST /v1/references/lookup``)."""
        return self._run(self._lookup_references_call(model, fingerprints, reference_set))


class AsyncRewardClient(_BaseClient[httpx.AsyncClient]):
    """Asynchronous client: the options and methods of ``RewardClient``, awaitable;
    ``async with AsyncRewardClient(url) as rc: await rc.score([...])``."""

    def _make_http(self, headers: dict[str, str], timeout: httpx.Timeout, transport: Any) -> httpx.AsyncClient:
        self._sem = asyncio.Semaphore(self.max_concurrency)
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[Any]) -> Outcome:
        try:
            async with self._sem:
                return await self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as e:
            return e

    async def _run(self, call: _Call[T]) -> T:
        exchange = self._exchange(call)
        step = next(exchange)
        while True:
            outcome: Outcome = None  # a wait's outcome is None
            if step is None:
                outcome = await self._send(call)
            else:
                await asyncio.sleep(step)
            try:
                step = exchange.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result

    async def score(
        self,
        items: Sequence[Any],
        models: Sequence[str] | None = None,
        aggregate: Mapping[str, Any] | None = None,
        reference_set: str | None = None,
        prompt_format: str | None = None,
    ) -> list[ScoreResult]:
        calls = self._score_calls(items, models, aggregate, reference_set, prompt_format)
        chunks = await asyncio.gather(*map(self._run, calls))
        return [r for chunk in chunks for r in chunk]

    async def models(self) -> list[dict[str, Any]]:
        return await self._run(self._models_call())

    async def health(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def put_references(
        self,
        model: str,
        values: References | None = None,
        *,
        samples: Samples | None = None,
        quantile: float | None = None,
        policy: str | None = None,
        default: float | None = None,
        n_samples: int | None = None,
        reference_set: str | None = None,
    ) -> dict[str, Any]:
        call = self._put_references_call(model, values, samples, quantile, policy, default, n_samples, reference_set)
        return await self._run(call)

    async def get_reference(
        self, model: str, prompt: PromptLike, reference_set: str | None = None
    ) -> dict[str, Any] | None:
        return await self._run(self._get_reference_call(model, prompt, reference_set))

    async def lookup_references(
        self, model: str, fingerprints: Sequence[str], reference_set: str | None = None
    ) -> dict[str, Any]:
        return await self._run(self._lookup_references_call(model, fingerprints, reference_set))
