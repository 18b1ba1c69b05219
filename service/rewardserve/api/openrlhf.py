"""OpenRLHF's remote reward-model protocol (``--remote_rm_url http://HOST:PORT/get_reward``).

A request holds decoded (prompt + response) strings; each becomes a ``/v1/score`` item scored with
the aggregate configured under ``openrlhf``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Request

from .. import prompt_formats
from ..errors import InvalidInput
from ..prompt_formats import split_query
from ..schemas import AggregateSpec, OpenRLHFRequest, OpenRLHFResponse, ReferenceSetName, ScoreItem
from .bodies import OffLoopBodyRoute
from .deps import KeyDep, ScorerDep, authorize, cancel_on_disconnect
from .routes import ERROR_RESPONSES

router = APIRouter(route_class=OffLoopBodyRoute)  # large bodies validate off the event loop

ReferenceSetHeader = Annotated[
    ReferenceSetName | None, Header(description="the reference set; default: openrlhf.reference_set")
]


@router.post("/get_reward", response_model=OpenRLHFResponse, responses=ERROR_RESPONSES, tags=["scoring"])
async def get_reward(
    body: OpenRLHFRequest, request: Request, scorer: ScorerDep, key: KeyDep, x_reference_set: ReferenceSetHeader = None
) -> OpenRLHFResponse:
    """OpenRLHF ``--remote_rm_url`` protocol: ``{"query", "prompts", "labels"}`` → ``{"rewards", "scores",
    "extra_logs"}``. Each response is its query minus the prompt prefix (``split_query``: whitespace that
    decoding added is allowed); a prompt rendered with the policy's chat template is parsed back into
    messages and the response's end-of-turn markup removed (``openrlhf.prompt_format``, default the
    service's ``prompt_format``: ``auto``); ``rewards`` is the aggregate configured under ``openrlhf``
    (default ``lsc_sum`` over every model), against the references of the ``X-Reference-Set`` header's
    set (default: ``openrlhf.reference_set``)."""
    scorer.check_ready()
    cfg = scorer.settings.openrlhf
    reference_set = x_reference_set or cfg.reference_set
    authorize(key, reference_set)
    small = prompt_formats.is_small(body.prompts, body.query)
    items = to_items(body) if small else await asyncio.to_thread(to_items, body)  # linear, but long: off the loop
    out = await cancel_on_disconnect(
        request,
        scorer.score(
            items,
            cfg.models,
            AggregateSpec(method=cfg.method, weights=cfg.weights),
            prompt_format=cfg.prompt_format,
            reference_set=reference_set,
        ),
    )
    rewards = [r.aggregate for r in out.results]
    extra: dict[str, list[float]] = {"aggregate": rewards}
    for m in out.models:
        extra[f"{m}/raw"] = [r.raw[m] for r in out.results]
        extra[f"{m}/transformed"] = [r.transformed[m] for r in out.results]
    return OpenRLHFResponse(rewards=rewards, scores=rewards, extra_logs=extra)


def to_items(body: OpenRLHFRequest) -> list[ScoreItem]:
    """One item per (query, prompt): the response is the query minus its prompt prefix."""
    if len(body.prompts) != len(body.query):
        raise InvalidInput(f"'query' has {len(body.query)} entries but 'prompts' has {len(body.prompts)}")
    items = []
    for i, (q, p) in enumerate(zip(body.query, body.prompts)):
        response = split_query(q, p)
        if response is None:
            raise InvalidInput(f"query[{i}] does not start with prompts[{i}]")
        items.append(ScoreItem(prompt=p, response=response))
    return items
