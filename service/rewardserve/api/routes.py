"""HTTP routes. Each handler validates (pydantic), authorizes, then hands off to the scoring pipeline
(``scoring.py``), the reference service (``references/service.py``) or the backbone registry, and
turns the typed answer into its wire model; errors are domain errors, put on the wire by the one
table in ``errors.py``. OpenRLHF's ``/get_reward`` lives in ``openrlhf.py``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rewardclient.protocol import plain_prompt

from ..errors import LoadFailed, NotLive, NotReady
from ..references import DEFAULT_SET
from ..references import service as refs
from ..schemas import (
    AggregateSpec,
    ErrorBody,
    ModelRevision,
    ReferenceSetContents,
    ReferenceSetDeleted,
    ReferenceSetImported,
    ReferenceSetList,
    ReferenceSetName,
    ReferencesFound,
    ReferencesLookup,
    ReferencesStored,
    ReferencesUpload,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    StoredReference,
    Usage,
)
from ..scoring import Item, ScoreOutcome
from ..scoring import ScoreRequest as CoreRequest
from .bodies import OffLoopBodyRoute
from .deps import (
    KeyDep,
    ReferencesDep,
    RegistryDep,
    ScorerDep,
    StateDep,
    authorize,
    cancel_on_disconnect,
    visible_sets,
)
from .exposure import without_paths

router = APIRouter(route_class=OffLoopBodyRoute)  # large bodies validate off the event loop

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (403, 404, 413, 422, 429, 500, 503)
}


@router.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES, tags=["scoring"])
async def score(
    body: ScoreRequest, request: Request, response: Response, scorer: ScorerDep, key: KeyDep
) -> ScoreResponse:
    """Score (prompt, response) items with several reward models: raw, transformed, aggregate."""
    t0 = time.perf_counter()
    authorize(key, body.reference_set)
    scorer.registry.check_ready()
    agg = body.aggregate or AggregateSpec()
    many = sum(len(it.prompt) if isinstance(it.prompt, list) else 1 for it in body.items) > INLINE_MAX_ITEMS
    req = CoreRequest(
        await asyncio.to_thread(core_items, body.items) if many else core_items(body.items),
        body.models,
        agg.method,
        agg.weights,
        body.prompt_format,
        body.reference_set,
        body.missing_reference,
    )
    outcome = await cancel_on_disconnect(request, scorer.score(req))
    result = score_response(outcome)
    response.headers["Server-Timing"] = server_timing(outcome.timing, time.perf_counter() - t0)
    return result


INLINE_MAX_ITEMS = 1_000  # items and chat messages converted on the event loop; more: in a worker thread


def core_items(items: Sequence[ScoreItem]) -> list[Item]:
    """Parsed wire items as the pipeline takes them."""
    return [Item(plain_prompt(it.prompt), it.response, it.id, it.reference, it.label) for it in items]


def score_response(outcome: ScoreOutcome) -> ScoreResponse:
    """The wire form of a scoring outcome (built from values the pipeline computed: no validation)."""
    return ScoreResponse.model_construct(
        results=[
            ScoreResult.model_construct(
                id=r.id,
                raw=r.raw,
                reference=r.reference,
                reference_source=r.reference_source,
                transformed=r.transformed,
                aggregate=r.aggregate,
                p_all_good=r.p_all_good,
                truncated=r.truncated,
                warnings=r.warnings or None,
            )
            for r in outcome.items
        ],
        aggregate_method=outcome.method,
        reference_set=outcome.reference_set,
        models={m: ModelRevision.model_construct(revision=rev) for m, rev in outcome.revisions.items()},
        usage=Usage.model_construct(items=len(outcome.items), tokens=outcome.tokens),
    )


def server_timing(timing: dict[str, float], total: float) -> str:
    """``Server-Timing`` header value (W3C; durations in ms): where the request's time went inside
    the server — ``encode`` (tokenization), ``queue`` (waiting for a forward worker), ``forward``
    (its forward passes), ``total`` (validated body → the response model built; its JSON encoding,
    in pydantic's Rust core, follows)."""
    parts = [f"{k};dur={1000 * v:.2f}" for k, v in timing.items()]
    return ", ".join([*parts, f"total;dur={1000 * total:.2f}"])


router.add_api_route(
    "/score",
    score,
    methods=["POST"],
    response_model=ScoreResponse,
    responses=ERROR_RESPONSES,
    tags=["scoring"],
    summary="Alias of POST /v1/score",
)


@router.get("/v1/models", tags=["models"], response_model=None)
async def models(state: StateDep) -> dict[str, Any]:
    """The served reward models with kind, source, revision, device, dtype, transform and reference policy."""
    registry = state.registry
    if not state.loaded:
        return {"models": [], "ready": False}
    import torch

    runtime = {
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "batchers": registry.describe_backbones(),
    }
    return {"models": without_paths(registry.describe_models()), "ready": state.ready, "runtime": runtime}


@router.post("/v1/references", response_model=ReferencesStored, responses=ERROR_RESPONSES, tags=["references"])
async def put_references(
    body: ReferencesUpload, request: Request, references: ReferencesDep, registry: RegistryDep, key: KeyDep
) -> ReferencesStored:
    """Store per-prompt reference rewards: given ``value``s, or ``samples`` that the service scores
    and reduces to their ``quantile`` (default 0.85), into ``reference_set``. Needs scope admin."""
    authorize(key, body.reference_set, admin=True)
    registry.check_ready()
    return await cancel_on_disconnect(request, references.upload(body))


@router.post("/v1/references/lookup", response_model=ReferencesFound, responses=ERROR_RESPONSES, tags=["references"])
async def lookup_references(
    body: ReferencesLookup, references: ReferencesDep, registry: RegistryDep, key: KeyDep
) -> ReferencesFound:
    """Stored references of one set for many prompt fingerprints at once: ``{"references": {fp: entry | null}}``."""
    authorize(key, body.reference_set)
    registry.check_ready()
    return await references.lookup(body)


@router.get("/v1/references", response_model=StoredReference, responses=ERROR_RESPONSES, tags=["references"])
async def get_reference(
    references: ReferencesDep,
    registry: RegistryDep,
    key: KeyDep,
    model: str = Query(...),
    prompt_fingerprint: str = Query(..., min_length=64, max_length=64),
    reference_set: Annotated[ReferenceSetName, Query()] = DEFAULT_SET,
) -> StoredReference:
    """The stored reference for one model and prompt fingerprint (sha256 hex, see docs) in a set."""
    authorize(key, reference_set)
    registry.check_ready()
    return await references.get(model, prompt_fingerprint, reference_set)


@router.get("/v1/reference-sets", response_model=ReferenceSetList, responses=ERROR_RESPONSES, tags=["references"])
async def list_reference_sets(state: StateDep, key: KeyDep) -> ReferenceSetList:
    """The reference sets that hold entries, with entries per model (a key limited to some sets sees those)."""
    if state.store is None:
        return ReferenceSetList(reference_sets=[])
    return await refs.list_sets(state.store, visible_sets(key))


@router.get(
    "/v1/reference-sets/{name}/references",
    response_model=ReferenceSetContents,
    responses=ERROR_RESPONSES,
    tags=["references"],
)
async def export_reference_set(
    name: ReferenceSetName, references: ReferencesDep, registry: RegistryDep, key: KeyDep
) -> Response:
    """Every entry of a set (its export; POST it to another set's ``/references`` to import), streamed
    as it is read from the store, a page at a time."""
    authorize(key, name)
    registry.check_ready()
    return StreamingResponse(await refs.export_set(references.store, name), media_type="application/json")


@router.post(
    "/v1/reference-sets/{name}/references",
    response_model=ReferenceSetImported,
    responses=ERROR_RESPONSES,
    tags=["references"],
)
async def import_reference_set(
    name: ReferenceSetName, body: ReferenceSetContents, references: ReferencesDep, registry: RegistryDep, key: KeyDep
) -> ReferenceSetImported:
    """Insert or replace entries of set ``name`` as given (e.g. another set's export); every model
    must be served. Needs scope admin."""
    authorize(key, name, admin=True)
    registry.check_ready()
    return await references.import_set(name, body)


@router.delete(
    "/v1/reference-sets/{name}", response_model=ReferenceSetDeleted, responses=ERROR_RESPONSES, tags=["references"]
)
async def delete_reference_set(
    name: ReferenceSetName, references: ReferencesDep, registry: RegistryDep, key: KeyDep
) -> ReferenceSetDeleted:
    """Delete every entry of a set (its references and defaults). Needs scope admin."""
    authorize(key, name, admin=True)
    registry.check_ready()
    return await refs.delete_set(references.store, name)


@router.get("/healthz", tags=["operations"], responses={503: {"model": ErrorBody}}, response_model=None)
async def healthz(state: StateDep) -> dict[str, str]:
    """Alive: 200 while the process answers and its forwards work; 503 once forwards have kept
    failing, or one has hung, for longer than the readiness threshold plus ``health.liveness_grace_seconds``."""
    problem = state.health.not_live()
    if problem:
        raise NotLive(problem)
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses={503: {"model": ErrorBody}}, response_model=None)
async def readyz(state: StateDep) -> dict[str, Any]:
    """200 once every model is loaded and warmed up; 503 before (``not_ready``), on a load failure
    (``load_failed``), while draining, and while forwards keep failing or one has hung (``health``)."""
    if state.ready:
        return {"status": "ready", "models": list(state.registry.models)}
    if state.load_error:
        raise LoadFailed(state.load_error)
    unhealthy = state.health.not_ready() if state.loaded else None
    raise NotReady("draining" if state.draining else unhealthy or "loading models")


@router.get("/metrics", tags=["operations"])
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
