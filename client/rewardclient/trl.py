"""A reward function for TRL's ``GRPOTrainer(reward_funcs=[...])`` backed by rewardserve.

``GRPOTrainer`` calls a reward function with keyword arguments ``prompts``, ``completions``,
``completion_ids``, every dataset column (one value per completion), and — in the TRL releases
that have them — ``trainer_state``, ``log_metric`` and ``log_extra``. It expects one float per
completion. Prompts and completions are strings (plain) or message lists (conversational).

    from rewardclient.trl import RewardServeReward
    trainer = GRPOTrainer(model=..., reward_funcs=[RewardServeReward("http://rm:8000")], ...)

By default the reward is the service's aggregate (``lsc_sum``: Σ_m log σ(r_m − r_ref,m)); with
``output="raw"`` or ``"transformed"`` and ``model=NAME`` it is that model's value. Per-model raw
and transformed means are logged through ``log_metric`` as ``rewardserve/<model>/raw`` etc.
``reference_set=NAME`` scores against that set of stored references (one set per base policy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from .client import RewardClient
from .protocol import DEFAULT_AGGREGATE, AggregateMethod, plain_prompt


def _response_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    # conversational: a list of messages; the reply is the assistant content
    return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")


class RewardServeReward:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        models: Sequence[str] | None = None,
        aggregate: AggregateMethod = DEFAULT_AGGREGATE,
        weights: Mapping[str, float] | None = None,
        output: Literal["aggregate", "raw", "transformed"] = "aggregate",
        model: str | None = None,
        reference_column: str | None = "reference",
        reference_set: str | None = None,
        api_key: str | None = None,
        client: RewardClient | None = None,
        name: str = "rewardserve",
        **client_kwargs: Any,
    ):
        if output != "aggregate" and not model:
            raise ValueError(f"output={output!r} needs model=NAME")
        self.client = client or RewardClient(base_url, api_key=api_key, **client_kwargs)
        self.models = list(models) if models else None
        self.aggregate = {"method": aggregate, **({"weights": dict(weights)} if weights else {})}
        self.output, self.model, self.reference_column = output, model, reference_column
        self.reference_set = reference_set
        self.__name__ = name  # TRL names reward functions by __name__
        self.last_stats: dict[str, float] = {}

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        log_metric: Callable[[str, float], Any] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        refs = kwargs.get(self.reference_column) if self.reference_column else None
        items = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            item: dict[str, Any] = {"prompt": plain_prompt(p), "response": _response_text(c)}
            if refs is not None and refs[i]:
                item["reference"] = dict(refs[i])
            items.append(item)
        t0 = time.perf_counter()
        results = self.client.score(
            items, models=self.models, aggregate=self.aggregate, reference_set=self.reference_set
        )
        seconds = time.perf_counter() - t0
        if self.output == "aggregate":
            rewards = [r.aggregate for r in results]
        else:
            rewards = [getattr(r, self.output)[self.model] for r in results]
        stats = {
            "rewardserve/aggregate": sum(r.aggregate for r in results) / len(results),
            "rewardserve/seconds": seconds,
            "rewardserve/items_per_s": len(results) / seconds if seconds else 0.0,
        }
        for m in results[0].raw:
            stats[f"rewardserve/{m}/raw"] = sum(r.raw[m] for r in results) / len(results)
            stats[f"rewardserve/{m}/transformed"] = sum(r.transformed[m] for r in results) / len(results)
        self.last_stats = stats
        if log_metric is not None:
            for k, v in stats.items():
                log_metric(k, v)
        return rewards
