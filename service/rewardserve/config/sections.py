"""The service-level sections: request limits, the reference store, health, and the trainers' routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from rewardclient.protocol import DEFAULT_AGGREGATE, MAX_ABS_VALUE, AggregateMethod

from ..prompt_formats import check_format_name
from .base import _Strict


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest request body (413 above)")
    max_items_per_request: int = Field(1024, gt=0, description="items per score request")
    max_text_chars: int = Field(200_000, gt=0, description="prompt + response characters per item")
    max_models_per_request: int = Field(16, gt=0, description="models named in one score request")
    max_references_per_upload: int = Field(10_000, gt=0, description="references per upload request")
    max_messages_per_prompt: int = Field(
        1024, gt=0, description="messages in one chat prompt (a list of role/content messages); 422 above"
    )
    max_messages_per_request: int = Field(
        65_536, gt=0, description="chat messages in one request, all prompts together; 422 above"
    )


class ReferencesConfig(_Strict):
    store: str = Field(
        "sqlite:///~/.cache/rewardserve/references.db", description="sqlite:///PATH or redis://HOST:PORT/DB"
    )
    revision_mismatch: Literal["warn", "reject"] = Field(
        "warn", description="a stored reference made with another model revision: warn in the result, or 422"
    )


class HealthConfig(_Strict):
    """When forward failures or a hung forward turn ``/readyz``, then ``/healthz``, to 503 (health.py)."""

    max_consecutive_failures: int = Field(
        3,
        gt=0,
        description="this many failed forwards in a row on one backbone: /readyz answers 503 until one succeeds",
    )
    max_forward_seconds: float = Field(
        60.0, gt=0, description="a forward running longer than this: /readyz answers 503 until it returns"
    )
    liveness_grace_seconds: float = Field(
        60.0,
        ge=0,
        description="either state lasting this much longer: /healthz answers 503 too (the kubelet restarts the pod)",
    )
    recheck_seconds: float = Field(
        10.0,
        gt=0,
        description="while failures keep a backbone unready, try one small forward of it this often "
        "(no traffic comes to an unready pod to show that it works again)",
    )


class TrainerRouteConfig(_Strict):
    """What a trainer's own route scores with (``openrlhf:`` for ``/get_reward``, ``slime:`` for
    ``/slime/reward``): its requests carry no options of their own."""

    models: list[str] | None = Field(None, description="default: every configured model")
    method: AggregateMethod = Field(DEFAULT_AGGREGATE, description="the aggregate returned as the reward")
    weights: dict[str, Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]] | None = (
        Field(None, description="per-model weights of the aggregate (default: 1 each; |w| ≤ 1e6)")
    )
    prompt_format: str | None = Field(
        None,
        description="how the route's string prompts are read (see the top-level prompt_format); default: the "
        "top-level one",
    )

    reference_set: str = Field(
        "default",
        description="the reference set the route scores against; a request's X-Reference-Set header overrides it",
    )

    @field_validator("reference_set")
    @classmethod
    def _set_name(cls, v: str) -> str:
        from ..references.base import check_set_name

        return check_set_name(v)

    _format = field_validator("prompt_format")(lambda v: v if v is None else check_format_name(v))


class OpenRLHFConfig(TrainerRouteConfig):
    """``POST /get_reward`` (OpenRLHF's ``--reward.remote_url``): the aggregate returned as ``rewards``."""


class SlimeConfig(TrainerRouteConfig):
    """``POST /slime/reward`` (slime's ``--rm-type remote_rm``): the aggregate returned as ``score``."""
