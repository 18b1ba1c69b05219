"""HTTP routes. Each handler validates (pydantic), then hands off to the scorer or the store."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rewardclient.protocol import DEFAULT_QUANTILE

from .. import lsc
from ..prompt_formats import split_query
from ..references import DEFAULT_SET, Reference, StoreFull, StoreUnavailable, prompt_fingerprint
from ..schemas import (
    AggregateSpec,
    ErrorBody,
    OpenRLHFRequest,
    ReferencesLookup,
    ReferenceSetContents,
    ReferenceSetDeleted,
    ReferenceSetImported,
    ReferenceSetList,
    ReferenceSetName,
    ReferencesStored,
    ReferencesUpload,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    StoredReference,
)
from ..scoring import DEFAULT_KEY, plain_prompt
from .errors import ApiError
from .middleware import API_KEY_SCOPE

router = APIRouter()

_ERRORS = {code: {"model": ErrorBody} for code in (403, 404, 413, 422, 429, 500, 503)}


def _state(request: Request):
    return request.app.state.rs


def _scorer(request: Request):
    st = _state(request)
    if not st.loaded:
        detail = f": {st.load_error}" if st.load_error else " (models are loading)"
        raise ApiError(503, "not_ready", f"the service is not ready{detail}", {"Retry-After": "5"})
    return st.scorer


def _authorize(request: Request, reference_set: str | None = None, admin: bool = False) -> None:
    """403 unless the request's API key may do this: ``admin`` (write or delete references) needs
    scope admin; ``reference_set`` must be among the key's sets when it has a list. Without keys
    configured every request may do everything."""
    key = request.scope.get(API_KEY_SCOPE)
    if key is None:
        return
    if admin and key.scope != "admin":
        raise ApiError(403, "forbidden", f"this API key has scope {key.scope!r}: writing or deleting references needs scope 'admin'")
    if reference_set is not None and key.sets is not None and reference_set not in key.sets:
        raise ApiError(403, "forbidden", f"this API key may not use reference set {reference_set!r}; "
                                         f"it may use: {', '.join(sorted(key.sets)) or '(none)'}")


async def _store_call(coro):
    try:
        return await coro
    except StoreFull as e:  # a subclass of StoreUnavailable: a write refused, nothing evicted
        raise ApiError(503, "reference_store_full", f"reference store full: {e}", {"Retry-After": "30"}) from None
    except StoreUnavailable as e:
        raise ApiError(503, "reference_store_unavailable", f"reference store unavailable: {e}", {"Retry-After": "2"}) from None


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
    _authorize(request, body.reference_set)
    scorer = _scorer(request)
    timing: dict[str, float] = {}
    result = await _cancel_on_disconnect(request, scorer.score(body.items, body.models, body.aggregate, timing,
                                                               body.prompt_format, body.reference_set,
                                                               body.missing_reference))
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
async def get_reward(body: OpenRLHFRequest, request: Request,
                     x_reference_set: Annotated[ReferenceSetName | None, Header(description="the reference set; default: openrlhf.reference_set")] = None):
    """OpenRLHF ``--remote_rm_url`` protocol: ``{"query", "prompts", "labels"}`` → ``{"rewards", "scores",
    "extra_logs"}``. Each response is its query minus the prompt prefix (``split_query``: whitespace that
    decoding added is allowed); a prompt rendered with the policy's chat template is parsed back into
    messages and the response's end-of-turn markup removed (``openrlhf.prompt_format``, default the
    service's ``prompt_format``: ``auto``); ``rewards`` is the aggregate configured under ``openrlhf``
    (default ``lsc_sum`` over every model), against the references of the ``X-Reference-Set`` header's
    set (default: ``openrlhf.reference_set``)."""
    scorer = _scorer(request)
    reference_set = x_reference_set or scorer.settings.openrlhf.reference_set
    _authorize(request, reference_set)
    if len(body.prompts) != len(body.query):
        raise ApiError(422, "invalid_request", f"'query' has {len(body.query)} entries but 'prompts' has {len(body.prompts)}")
    items = []
    for i, (q, p) in enumerate(zip(body.query, body.prompts)):
        response = split_query(q, p)
        if response is None:
            raise ApiError(422, "invalid_request", f"query[{i}] does not start with prompts[{i}]")
        items.append(ScoreItem(prompt=p, response=response))
    cfg = scorer.settings.openrlhf
    agg = AggregateSpec(method=cfg.method, weights=cfg.weights)
    out = await _cancel_on_disconnect(request, scorer.score(items, cfg.models, agg, prompt_format=cfg.prompt_format,
                                                            reference_set=reference_set))
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
    and reduces to their ``quantile`` (default 0.85), into ``reference_set``. Needs scope admin."""
    _authorize(request, body.reference_set, admin=True)
    scorer = _scorer(request)
    lim = scorer.settings.limits.max_references_per_upload
    if len(body.entries) > lim:
        raise ApiError(413, "too_many_references", f"{len(body.entries)} entries; the limit (max_references_per_upload) is {lim}")
    (model,) = scorer.resolve_models([body.model])
    if not body.entries and body.default is None:
        raise ApiError(422, "invalid_request", "give 'entries', a 'default', or both")
    sm = scorer.models[model]
    prompts = [n.prompt for n in await scorer.normalise([plain_prompt(e.prompt) for e in body.entries], [""] * len(body.entries), None)]
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
    q = body.quantile if body.quantile is not None else DEFAULT_QUANTILE
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
    await _store_call(scorer.store.put_many(model, entries, body.reference_set))
    return {"model": model, "reference_set": body.reference_set, "stored": len(entries), "fingerprints": fps, "values": values}


@router.post("/v1/references/lookup", responses=_ERRORS, tags=["references"])
async def lookup_references(body: ReferencesLookup, request: Request):
    """Stored references of one set for many prompt fingerprints at once: ``{"references": {fp: entry | null}}``."""
    _authorize(request, body.reference_set)
    scorer = _scorer(request)
    (model,) = scorer.resolve_models([body.model])
    if len(body.prompt_fingerprints) > scorer.settings.limits.max_references_per_upload:
        raise ApiError(413, "too_many_references", f"at most {scorer.settings.limits.max_references_per_upload} fingerprints per lookup")
    fps = [f.lower() for f in body.prompt_fingerprints]
    found = await _store_call(scorer.store.get_many(model, fps + [DEFAULT_KEY], body.reference_set))
    default = found.get(DEFAULT_KEY)
    return {
        "model": model,
        "reference_set": body.reference_set,
        "revision": scorer.models[model].info.revision,
        "references": {fp: (found[fp].to_dict() if fp in found else None) for fp in fps},
        "default": default.to_dict() if default else None,
    }


@router.get("/v1/references", response_model=StoredReference, responses=_ERRORS, tags=["references"])
async def get_reference(request: Request, model: str = Query(...), prompt_fingerprint: str = Query(..., min_length=64, max_length=64),
                        reference_set: Annotated[ReferenceSetName, Query()] = DEFAULT_SET):
    """The stored reference for one model and prompt fingerprint (sha256 hex, see docs) in a set."""
    _authorize(request, reference_set)
    scorer = _scorer(request)
    (model,) = scorer.resolve_models([model])
    ref = await _store_call(scorer.store.get(model, prompt_fingerprint.lower(), reference_set))
    if ref is None:
        raise ApiError(404, "reference_not_found", f"no stored reference for model {model!r} and prompt fingerprint "
                                                   f"{prompt_fingerprint} in reference set {reference_set!r}")
    return {"reference_set": reference_set, "model": model, "prompt_fingerprint": prompt_fingerprint.lower(), **ref.to_dict()}


@router.get("/v1/reference-sets", response_model=ReferenceSetList, responses=_ERRORS, tags=["references"])
async def list_reference_sets(request: Request):
    """The reference sets that hold entries, with entries per model (a key limited to some sets sees those)."""
    key = request.scope.get(API_KEY_SCOPE)
    sets = await _store_call(_state(request).store.sets()) if _state(request).store else {}
    return {"reference_sets": [{"name": n, "models": m, "references": sum(m.values())} for n, m in sets.items()
                               if key is None or key.sets is None or n in key.sets]}


@router.get("/v1/reference-sets/{name}/references", response_model=ReferenceSetContents, responses=_ERRORS, tags=["references"])
async def export_reference_set(name: ReferenceSetName, request: Request):
    """Every entry of a set (its export; POST it to another set's ``/references`` to import)."""
    _authorize(request, name)
    rows = await _store_call(_scorer(request).store.all_rows(name))
    if not rows:
        raise ApiError(404, "reference_set_not_found", f"reference set {name!r} holds no references")
    return {"reference_set": name, "references": [{"model": m, "prompt_fingerprint": fp, **ref.to_dict()} for _, m, fp, ref in rows]}


@router.post("/v1/reference-sets/{name}/references", response_model=ReferenceSetImported, responses=_ERRORS, tags=["references"])
async def import_reference_set(name: ReferenceSetName, body: ReferenceSetContents, request: Request):
    """Insert or replace entries of set ``name`` as given (e.g. another set's export); every model
    must be served. Needs scope admin."""
    _authorize(request, name, admin=True)
    scorer = _scorer(request)
    lim = scorer.settings.limits.max_references_per_upload
    if len(body.references) > lim:
        raise ApiError(413, "too_many_references", f"{len(body.references)} entries; the limit (max_references_per_upload) is {lim}")
    by_model: dict[str, list[tuple[str, Reference]]] = {}
    for row in body.references:
        by_model.setdefault(row.model, []).append((row.prompt_fingerprint, Reference(
            row.value, row.revision, row.quantile, row.n_samples, row.policy, row.updated_at)))
    scorer.resolve_models(list(by_model))
    for model, entries in by_model.items():
        await _store_call(scorer.store.put_many(model, entries, name))
    return {"reference_set": name, "imported": len(body.references)}


@router.delete("/v1/reference-sets/{name}", response_model=ReferenceSetDeleted, responses=_ERRORS, tags=["references"])
async def delete_reference_set(name: ReferenceSetName, request: Request):
    """Delete every entry of a set (its references and defaults). Needs scope admin."""
    _authorize(request, name, admin=True)
    n = await _store_call(_scorer(request).store.delete_set(name))
    if not n:
        raise ApiError(404, "reference_set_not_found", f"reference set {name!r} holds no references")
    return {"reference_set": name, "deleted": n}


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
