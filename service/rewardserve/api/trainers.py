"""What the trainers' own routes share (OpenRLHF's ``/get_reward`` in ``openrlhf.py``, slime's
``/slime/reward`` in ``slime.py``): their requests carry no options, so each scores with its config
section (``config.TrainerRouteConfig``: models, aggregate, prompt format, reference set), under the
same auth, limits, errors and metrics as ``/v1/score``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Header, Request

from ..config import ApiKey, TrainerRouteConfig
from ..schemas import ReferenceSetName, ScoreItem
from ..scoring import ScoreOutcome, Scorer, ScoreRequest
from .deps import authorize, cancel_on_disconnect
from .routes import core_items

ReferenceSetHeader = Annotated[
    ReferenceSetName | None, Header(description="the reference set; default: the route's config section's")
]


def route_reference_set(scorer: Scorer, key: ApiKey | None, cfg: TrainerRouteConfig, header: str | None) -> str:
    """The set a trainer route scores against (the ``X-Reference-Set`` header, else ``cfg``'s), once
    the service is ready and the key may use it."""
    scorer.registry.check_ready()
    reference_set = header or cfg.reference_set
    authorize(key, reference_set)
    return reference_set


async def score_as_configured(
    request: Request, scorer: Scorer, cfg: TrainerRouteConfig, items: Sequence[ScoreItem], reference_set: str
) -> ScoreOutcome:
    """``items`` scored with ``cfg``'s models, aggregate and prompt format (cancelled if the client goes)."""
    req = ScoreRequest(
        core_items(items),
        cfg.models,
        cfg.method,
        cfg.weights,
        prompt_format=cfg.prompt_format,
        reference_set=reference_set,
    )
    return await cancel_on_disconnect(request, scorer.score(req))


def per_model(out: ScoreOutcome) -> dict[str, list[float | None]]:
    """Per model, ``<model>/raw`` and ``<model>/transformed``: one value per result, in order (None:
    the model was left out of that item)."""
    logs: dict[str, list[float | None]] = {}
    for m in out.revisions:
        logs[f"{m}/raw"] = [r.raw[m] for r in out.items]
        logs[f"{m}/transformed"] = [r.transformed[m] for r in out.items]
    return logs
