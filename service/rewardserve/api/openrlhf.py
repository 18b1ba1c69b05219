"""OpenRLHF's remote reward-model protocol (``--reward.remote_url http://HOST:PORT/get_reward``;
``--remote_rm_url`` in earlier releases).

A request holds decoded (prompt + response) strings; each becomes a ``/v1/score`` item, with its
entry of ``labels`` as the item's ``label``, scored with the options of the ``openrlhf`` section."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from .. import prompt_formats
from ..errors import InvalidInput
from ..prompt_formats import split_query
from ..schemas import OpenRLHFRequest, OpenRLHFResponse, ScoreItem
from .bodies import OffLoopBodyRoute
from .deps import KeyDep, ScorerDep
from .routes import ERROR_RESPONSES
from .trainers import ReferenceSetHeader, per_model, route_reference_set, score_as_configured

router = APIRouter(route_class=OffLoopBodyRoute)  # large bodies validate off the event loop


@router.post("/get_reward", response_model=OpenRLHFResponse, responses=ERROR_RESPONSES, tags=["scoring"])
async def get_reward(
    body: OpenRLHFRequest, request: Request, scorer: ScorerDep, key: KeyDep, x_reference_set: ReferenceSetHeader = None
) -> OpenRLHFResponse:
    """OpenRLHF ``--reward.remote_url`` protocol: ``{"query", "prompts", "labels"}`` → ``{"rewards", "scores",
    "extra_logs"}``. Each response is its query minus the prompt prefix (``split_query``: whitespace that
    decoding added is allowed); a prompt rendered with the policy's chat template is parsed back into
    messages and the response's end-of-turn markup removed (``openrlhf.prompt_format``, default the
    service's ``prompt_format``: ``auto``); ``labels[i]`` is item i's ``label``. ``rewards`` is the aggregate
    configured under ``openrlhf`` (default ``lsc_sum`` over every model), against the references of the
    ``X-Reference-Set`` header's set (default: ``openrlhf.reference_set``). Empty lists get empty lists."""
    cfg = scorer.settings.openrlhf
    reference_set = route_reference_set(scorer, key, cfg, x_reference_set)
    small = prompt_formats.is_small(body.prompts, body.query)
    items = to_items(body) if small else await asyncio.to_thread(to_items, body)  # linear, but long: off the loop
    if not items:
        return OpenRLHFResponse(rewards=[], scores=[], extra_logs={})
    out = await score_as_configured(request, scorer, cfg, items, reference_set)
    rewards = [r.aggregate for r in out.items]
    return OpenRLHFResponse(rewards=rewards, scores=rewards, extra_logs={"aggregate": rewards, **per_model(out)})


def to_items(body: OpenRLHFRequest) -> list[ScoreItem]:
    """One item per (query, prompt, label): the response is the query minus its prompt prefix."""
    if len(body.prompts) != len(body.query):
        raise InvalidInput(f"'query' has {len(body.query)} entries but 'prompts' has {len(body.prompts)}")
    if body.labels is not None and len(body.labels) != len(body.query):
        raise InvalidInput(f"'query' has {len(body.query)} entries but 'labels' has {len(body.labels)}")
    labels = body.labels if body.labels is not None else [None] * len(body.query)
    items = []
    for i, (q, p, label) in enumerate(zip(body.query, body.prompts, labels)):
        response = split_query(q, p)
        if response is None:
            raise InvalidInput(f"query[{i}] does not start with prompts[{i}]")
        items.append(ScoreItem(prompt=p, response=response, label=label))
    return items
