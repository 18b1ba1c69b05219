"""HTTP routes. Each handler validates (pydantic), then hands off to the scorer or the store."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import lsc
from ..references import Reference, StoreFull, StoreUnavailable, prompt_fingerprint
from ..schemas import (
    AggregateSpec,
    ErrorBody,
    OpenRLHFRequest,
    ReferencesLookup,
    ReferencesStored,
    ReferencesUpload,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    StoredReference,
)
from ..scoring import DEFAULT_KEY, plain_prompt
from .errors import ApiError

router = APIRouter()

_ERRORS = {code: {"model": ErrorBody} for code in (404, 413, 422, 429, 500, 503)}
DEFAULT_SAMPLE_QUANTILE = 0.85


def _state(request: Request):
    return request.app.state.rs


def _scorer(request: Request):
    st = _state(request)
    if not st.loaded:
        detail = f": {st.load_error}" if st.load_error else " (models are loading)"
        raise ApiError(503, "not_ready", f"the service is not ready{detail}", {"Retry-After": "5"})
    return st.scorer


async def _until_disconnect(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def _cancel_on_disconnect(request: Request, coro):
    """Run ``coro``; if the client goes away first, cancel it (its queued items are dropped)."""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        work.cancel()
        raise ApiError(499, "client_closed_request", "the client closed the connection")
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()


@router.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS, tags=["scoring"])
async def score(body: ScoreRequest, request: Request):
    """Score (prompt, response) items with several reward models: raw, transformed, aggregate."""
    t0 = time.perf_counter()
    scorer = _scorer(request)
    timing: dict[str, float] = {}
    result = await _cancel_on_disconnect(request, scorer.score(body.items, body.models, body.aggregate, timing))
    response = JSONResponse(result)
    response.headers["Server-Timing"] = server_timing(timing, time.perf_counter() - t0)
    return response


def server_timing(timing: dict[str, float], total: float) -> str:
    """``Server-Timing`` header value (W3C; durations in ms): where the request's time went inside
    the server — ``encode`` (tokenization), ``queue`` (waiting for a forward worker), ``forward``
    (its forward passes), ``total`` (validated body → rendered response)."""
    parts = [f"{k};dur={1000 * v:.2f}" for k, v in timing.items()]
    return ", ".join([*parts, f"total;dur={1000 * total:.2f}"])


router.add_api_route(
    "/score", score, methods=["POST"], response_model=ScoreResponse, responses=_ERRORS, tags=["scoring"],
    summary="Alias of POST /v1/score",
)


@router.post("/get_reward", responses=_ERRORS, tags=["scoring"])
async def get_reward(body: OpenRLHFRequest, request: Request):
    """OpenRLHF ``--remote_rm_url`` protocol: ``{"query", "prompts", "labels"}`` → ``{"rewards", "scores",
    "extra_logs"}``. Each response is its query minus the prompt prefix; ``rewards`` is the aggregate
    configured under ``openrlhf`` (default ``lsc_sum`` over every model)."""
    scorer = _scorer(request)
    if len(body.prompts) != len(body.query):
        raise ApiError(422, "invalid_request", f"'query' has {len(body.query)} entries but 'prompts' has {len(body.prompts)}")
    items = []
    for i, (q, p) in enumerate(zip(body.query, body.prompts)):
        if not q.startswith(p):
            raise ApiError(422, "invalid_request", f"query[{i}] does not start with prompts[{i}]")
        items.append(ScoreItem(prompt=p, response=q[len(p):]))
    cfg = scorer.settings.openrlhf
    agg = AggregateSpec(method=cfg.method, weights=cfg.weights)
    out = await _cancel_on_disconnect(request, scorer.score(items, cfg.models, agg))
    results = out["results"]
    rewards = [r["aggregate"] for r in results]
    extra = {"aggregate": rewards}
    for m in out["models"]:
        extra[f"{m}/raw"] = [r["raw"][m] for r in results]
        extra[f"{m}/transformed"] = [r["transformed"][m] for r in results]
    return {"rewards": rewards, "scores": rewards, "extra_logs": extra}


@router.get("/v1/models", tags=["models"])
async def models(request: Request):
    """The served reward models with kind, source, revision, device, dtype, transform and reference policy."""
    st = _state(request)
    if st.scorer is None or not st.loaded:
        return {"models": [], "ready": False}
    import os

    import torch

    runtime = {"torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
               "batchers": {n: {"forward_workers": b.forward_workers,
                                "threads_alone": b.threads[0] if b.threads else None,
                                "threads_shared": b.threads[1] if b.threads else None}
                            for n, b in st.scorer.batchers.items()}}
    return {"models": st.scorer.describe_models(), "ready": st.ready, "runtime": runtime}


@router.post("/v1/references", response_model=ReferencesStored, responses=_ERRORS, tags=["references"])
async def put_references(body: ReferencesUpload, request: Request):
    """Store per-prompt reference rewards: given ``value``s, or ``samples`` that the service scores
    and reduces to their ``quantile`` (default 0.85)."""
    scorer = _scorer(request)
    lim = scorer.settings.limits.max_references_per_upload
    if len(body.entries) > lim:
        raise ApiError(413, "too_many_references", f"{len(body.entries)} entries; the limit (max_references_per_upload) is {lim}")
    (model,) = scorer.resolve_models([body.model])
    if not body.entries and body.default is None:
        raise ApiError(422, "invalid_request", "give 'entries', a 'default', or both")
    sm = scorer.models[model]
    prompts = [plain_prompt(e.prompt) for e in body.entries]
    values: list[float] = []
    n_samples: list[int | None] = []
    sample_pairs, owners = [], []
    for i, (e, p) in enumerate(zip(body.entries, prompts)):
        if (e.value is None) == (e.samples is None):
            raise ApiError(422, "invalid_request", f"entries[{i}]: give exactly one of 'value' or 'samples'")
        if e.samples is not None and e.n_samples is not None:
            raise ApiError(422, "invalid_request", f"entries[{i}]: 'n_samples' goes with 'value' (with 'samples' it is their count)")
        if e.samples is not None:
            sample_pairs.extend((p, s) for s in e.samples)
            owners.extend([i] * len(e.samples))
    q = body.quantile if body.quantile is not None else DEFAULT_SAMPLE_QUANTILE
    if sample_pairs:
        if len(sample_pairs) > scorer.settings.limits.max_items_per_request * 16:
            raise ApiError(413, "too_many_samples", f"{len(sample_pairs)} samples in one upload; send fewer per request")
        raw, _, _ = await _cancel_on_disconnect(request, scorer.raw_rewards(sample_pairs, [model]))
        per_entry: dict[int, list[float]] = {}
        for k, owner in enumerate(owners):
            per_entry.setdefault(owner, []).append(float(raw[k, 0]))
    for i, e in enumerate(body.entries):
        if e.samples is not None:
            values.append(lsc.quantile(per_entry[i], q))
            n_samples.append(len(e.samples))
        else:
            values.append(float(e.value))  # type: ignore[arg-type]
            n_samples.append(e.n_samples)
    fps = [prompt_fingerprint(p) for p in prompts]
    now = time.time()

    def ref(value: float, n: int | None, from_samples: bool) -> Reference:
        quantile = q if from_samples or body.quantile is not None else None
        return Reference(value=value, revision=sm.info.revision, quantile=quantile, n_samples=n, policy=body.policy, updated_at=now)

    entries = [(fp, ref(v, n, e.samples is not None)) for fp, v, n, e in zip(fps, values, n_samples, body.entries)]
    if body.default is not None:
        entries.append((DEFAULT_KEY, ref(body.default.value, body.default.n_samples, False)))
    try:
        await scorer.store.put_many(model, entries)
    except StoreFull as e:
        raise ApiError(503, "reference_store_full", f"reference store full: {e}", {"Retry-After": "30"}) from None
    except StoreUnavailable as e:
        raise ApiError(503, "reference_store_unavailable", f"reference store unavailable: {e}", {"Retry-After": "2"}) from None
    return {"model": model, "stored": len(entries), "fingerprints": fps, "values": values}


@router.post("/v1/references/lookup", responses=_ERRORS, tags=["references"])
async def lookup_references(body: ReferencesLookup, request: Request):
    """Stored references for many prompt fingerprints at once: ``{"references": {fp: entry | null}}``."""
    scorer = _scorer(request)
    (model,) = scorer.resolve_models([body.model])
    if len(body.prompt_fingerprints) > scorer.settings.limits.max_references_per_upload:
        raise ApiError(413, "too_many_references", f"at most {scorer.settings.limits.max_references_per_upload} fingerprints per lookup")
    fps = [f.lower() for f in body.prompt_fingerprints]
    try:
        found = await scorer.store.get_many(model, fps + [DEFAULT_KEY])
    except StoreUnavailable as e:
        raise ApiError(503, "reference_store_unavailable", f"reference store unavailable: {e}", {"Retry-After": "2"}) from None
    default = found.get(DEFAULT_KEY)
    return {
        "model": model,
        "revision": scorer.models[model].info.revision,
        "references": {fp: (found[fp].to_dict() if fp in found else None) for fp in fps},
        "default": default.to_dict() if default else None,
    }


@router.get("/v1/references", response_model=StoredReference, responses=_ERRORS, tags=["references"])
async def get_reference(request: Request, model: str = Query(...), prompt_fingerprint: str = Query(..., min_length=64, max_length=64)):
    """The stored reference for one model and prompt fingerprint (sha256 hex, see docs)."""
    scorer = _scorer(request)
    (model,) = scorer.resolve_models([model])
    try:
        ref = await scorer.store.get(model, prompt_fingerprint.lower())
    except StoreUnavailable as e:
        raise ApiError(503, "reference_store_unavailable", f"reference store unavailable: {e}", {"Retry-After": "2"}) from None
    if ref is None:
        raise ApiError(404, "reference_not_found", f"no stored reference for model {model!r} and prompt fingerprint {prompt_fingerprint}")
    return {"model": model, "prompt_fingerprint": prompt_fingerprint.lower(), **ref.to_dict()}


@router.get("/healthz", tags=["operations"], responses={503: {"model": ErrorBody}})
async def healthz(request: Request):
    """Alive: 200 while the process answers and its forwards work; 503 once forwards have kept
    failing, or one has hung, for longer than the readiness threshold plus ``health.liveness_grace_seconds``."""
    health = _state(request).health
    problem = health.not_live() if health else None
    if problem:
        return JSONResponse({"error": {"type": "not_live", "message": problem}}, status_code=503)
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses={503: {"model": ErrorBody}})
async def readyz(request: Request):
    """200 once every model is loaded and warmed up; 503 before, on a load failure, while draining,
    and while forwards keep failing or one has hung (``health``)."""
    st = _state(request)
    if st.ready:
        return {"status": "ready", "models": list(st.scorer.models)}
    unhealthy = st.health.not_ready() if st.health and st.loaded else None
    reason = st.load_error or ("draining" if st.draining else unhealthy or "loading models")
    return JSONResponse({"error": {"type": "not_ready", "message": reason}}, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", tags=["operations"])
async def metrics(request: Request):
    """Prometheus text exposition."""
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
