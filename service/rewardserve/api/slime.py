"""slime's remote reward model (``--rm-type remote_rm --rm-url http://HOST:PORT/slime/reward
--reward-key score``).

slime posts one sample per request, ``{"prompt", "response", "label"}``, and takes the JSON answer
as the sample's reward (``--reward-key`` picks a field of it). The sample becomes one ``/v1/score``
item (its ``label`` the item's label), scored with the options of the ``slime`` section."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..schemas import ScoreItem, SlimeRequest
from .bodies import OffLoopBodyRoute
from .deps import KeyDep, ScorerDep
from .routes import ERROR_RESPONSES
from .trainers import ReferenceSetHeader, per_model, route_reference_set, score_as_configured

router = APIRouter(route_class=OffLoopBodyRoute)  # large bodies validate off the event loop


@router.post("/slime/reward", response_model=dict[str, float | None], responses=ERROR_RESPONSES, tags=["scoring"])
async def slime_reward(
    body: SlimeRequest, request: Request, scorer: ScorerDep, key: KeyDep, x_reference_set: ReferenceSetHeader = None
) -> dict[str, float | None]:
    """slime ``remote_rm`` protocol: ``{"prompt": str | messages, "response": str, "label": any}`` →
    ``{"score": aggregate, "<model>/raw": r, "<model>/transformed": u, …}`` (run slime with
    ``--reward-key score``). A string prompt is read like any other (``slime.prompt_format``, default the
    service's ``prompt_format``: ``auto`` parses a chat-templated prompt back into messages); ``score`` is
    the aggregate configured under ``slime`` (default ``lsc_sum`` over every model), against the
    references of the ``X-Reference-Set`` header's set (default: ``slime.reference_set``)."""
    cfg = scorer.settings.slime
    reference_set = route_reference_set(scorer, key, cfg, x_reference_set)
    item = ScoreItem(prompt=body.prompt, response=body.response, label=body.label)
    out = await score_as_configured(request, scorer, cfg, [item], reference_set)
    return {"score": out.items[0].aggregate, **{k: v[0] for k, v in per_model(out).items()}}
