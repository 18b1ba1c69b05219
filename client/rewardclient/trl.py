"""Reward functions for TRL's ``GRPOTrainer(reward_funcs=[...])`` backed by rewardserve.

``GRPOTrainer`` calls a reward function with keyword arguments ``prompts``, ``completions``,
``completion_ids``, every dataset column (one value per completion), ``trainer_state``,
``log_metric`` and ``log_extra``, and expects one reward per completion; ``None`` (turned into NaN)
says the reward does not apply to that completion. Since TRL 1.16 it awaits async reward callables
(functions, partials and instances with an async ``__call__``) concurrently with the other reward
functions. Prompts and completions are strings (plain) or message lists (conversational).

    from rewardclient.trl import AsyncRewardServeReward, RewardServeReward
    trainer = GRPOTrainer(model=..., reward_funcs=[AsyncRewardServeReward("http://rm:8000")], ...)

``RewardServeReward`` is the same function, synchronous (TRL runs it in its own thread, one after the
other with the other synchronous reward functions).

By default the reward is the service's aggregate (``lsc_sum``: Σ_m log σ(r_m − r_ref,m)); with
``output="raw"`` or ``"transformed"`` and ``model=NAME`` it is that model's value.

- ``label_column``: the dataset column sent as each item's ``label`` (ground truth for checks;
  reward models ignore it); default ``"auto"``: the first of ``answer``, ``solution``,
  ``ground_truth``, ``label`` that the dataset has; ``None``: no label.
- ``reference_column`` (default ``"reference"``): a column of per-model inline references.
- ``applicable``: rows the reward applies to, as a column name (the row applies when its value is
  truthy) or a predicate over the row (``{"prompt", "completion", <column>: value, …}``); the other
  rows get ``None`` and are not sent.
- ``reference_set=NAME`` scores against that set of stored references (one set per base policy).

Per-model raw and transformed rewards go to ``log_extra`` (columns ``<name>/<model>/raw`` etc. of the
completions table, ``None`` where the reward does not apply) and their means over the scored rows to
``log_metric``, with ``<name>/aggregate``, ``<name>/seconds`` and ``<name>/items_per_s``; ``name``
(default ``"rewardserve"``) is also the function's ``__name__``, which TRL logs its reward under.
Labels are sent, never logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from ._per_loop import PerLoop
from .client import AsyncRewardClient, RewardClient, ScoreResult
from .protocol import DEFAULT_AGGREGATE, AggregateMethod, plain_label, plain_prompt

LABEL_COLUMNS = ("answer", "solution", "ground_truth", "label")  # label_column="auto": the first present
Output = Literal["aggregate", "raw", "transformed"]
Applicable = str | Callable[[Mapping[str, Any]], bool] | None
_TRL_KEYWORDS = frozenset({"completion_ids", "trainer_state", "log_metric", "log_extra", "environments"})


def _response_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    # conversational: a list of messages; the reply is the assistant content
    return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")


class _RewardServeFunction:
    """What the sync and async reward functions share: options, the request, the rewards and logs."""

    def __init__(
        self,
        *,
        models: Sequence[str] | None,
        aggregate: AggregateMethod,
        weights: Mapping[str, float] | None,
        output: Output,
        model: str | None,
        reference_column: str | None,
        label_column: str | None,
        applicable: Applicable,
        reference_set: str | None,
        name: str,
    ):
        if output != "aggregate" and not model:
            raise ValueError(f"output={output!r} needs model=NAME")
        self.models = list(models) if models else None
        self.aggregate = {"method": aggregate, **({"weights": dict(weights)} if weights else {})}
        self.output, self.model, self.reference_column = output, model, reference_column
        self.label_column, self.applicable = label_column, applicable
        self.reference_set = reference_set
        self.__name__ = name  # TRL names reward functions by __name__
        self.last_stats: dict[str, float] = {}

    def _label_column(self, columns: Mapping[str, Any]) -> str | None:
        if self.label_column == "auto":
            return next((c for c in LABEL_COLUMNS if c in columns), None)
        if self.label_column is not None and self.label_column not in columns:
            have = sorted(k for k in columns if k not in _TRL_KEYWORDS)
            raise ValueError(f"label_column {self.label_column!r} is not a dataset column; the columns are {have}")
        return self.label_column

    def _applies(self, i: int, prompt: Any, completion: Any, columns: Mapping[str, Any]) -> bool:
        if self.applicable is None:
            return True
        if isinstance(self.applicable, str):
            if self.applicable not in columns:
                have = sorted(k for k in columns if k not in _TRL_KEYWORDS)
                raise ValueError(f"applicable {self.applicable!r} is not a dataset column; the columns are {have}")
            return bool(columns[self.applicable][i])
        row = {k: v[i] for k, v in columns.items() if k not in _TRL_KEYWORDS}
        return bool(self.applicable({**row, "prompt": prompt, "completion": completion}))

    def _items(
        self, prompts: Sequence[Any], completions: Sequence[Any], columns: Mapping[str, Any]
    ) -> tuple[list[int], list[dict[str, Any]]]:
        """The rows the reward applies to, and their items (label and inline reference included)."""
        refs = columns.get(self.reference_column) if self.reference_column else None
        label_column = self._label_column(columns)
        labels = columns[label_column] if label_column else None
        rows, items = [], []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            if not self._applies(i, p, c, columns):
                continue
            item: dict[str, Any] = {"prompt": plain_prompt(p), "response": _response_text(c)}
            if refs is not None and refs[i]:
                item["reference"] = dict(refs[i])
            if labels is not None and labels[i] is not None:
                item["label"] = plain_label(labels[i])
            rows.append(i)
            items.append(item)
        return rows, items

    def _score_kwargs(self) -> dict[str, Any]:
        return {"models": self.models, "aggregate": self.aggregate, "reference_set": self.reference_set}

    def _rewards(
        self,
        n: int,
        rows: list[int],
        results: list[ScoreResult],
        seconds: float,
        log_metric: Callable[[str, float], Any] | None,
        log_extra: Callable[[str, list[Any]], Any] | None,
    ) -> list[float | None]:
        """One reward per completion (``None`` where it does not apply); logs per-model values."""
        rewards: list[float | None] = [None] * n
        for i, r in zip(rows, results, strict=True):
            rewards[i] = r.aggregate if self.output == "aggregate" else getattr(r, self.output)[self.model]
        if not results:
            self.last_stats = {}
            return rewards
        name = self.__name__
        columns: dict[str, list[float | None]] = {}
        for m in results[0].raw:
            for kind in ("raw", "transformed"):
                column: list[float | None] = [None] * n
                for i, r in zip(rows, results, strict=True):
                    column[i] = getattr(r, kind)[m]
                columns[f"{name}/{m}/{kind}"] = column
        stats = {
            f"{name}/aggregate": sum(r.aggregate for r in results) / len(results),
            f"{name}/seconds": seconds,
            f"{name}/items_per_s": len(results) / seconds if seconds else 0.0,
        }
        for key, column in columns.items():
            scored = [v for v in column if v is not None]
            stats[key] = sum(scored) / len(scored)
        self.last_stats = stats
        if log_metric is not None:
            for k, v in stats.items():
                log_metric(k, v)
        if log_extra is not None:
            for k, column in columns.items():
                log_extra(k, column)
        return rewards


class RewardServeReward(_RewardServeFunction):
    """The synchronous reward function (see the module docstring for the options)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        models: Sequence[str] | None = None,
        aggregate: AggregateMethod = DEFAULT_AGGREGATE,
        weights: Mapping[str, float] | None = None,
        output: Output = "aggregate",
        model: str | None = None,
        reference_column: str | None = "reference",
        label_column: str | None = "auto",
        applicable: Applicable = None,
        reference_set: str | None = None,
        api_key: str | None = None,
        client: RewardClient | None = None,
        name: str = "rewardserve",
        **client_kwargs: Any,
    ):
        super().__init__(
            models=models,
            aggregate=aggregate,
            weights=weights,
            output=output,
            model=model,
            reference_column=reference_column,
            label_column=label_column,
            applicable=applicable,
            reference_set=reference_set,
            name=name,
        )
        self.client = client or RewardClient(base_url, api_key=api_key, **client_kwargs)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        log_metric: Callable[[str, float], Any] | None = None,
        log_extra: Callable[[str, list[Any]], Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        rows, items = self._items(prompts, completions, kwargs)
        t0 = time.perf_counter()
        results = self.client.score(items, **self._score_kwargs()) if items else []
        return self._rewards(len(prompts), rows, results, time.perf_counter() - t0, log_metric, log_extra)


class AsyncRewardServeReward(_RewardServeFunction):
    """The async reward function: TRL (1.16+) awaits it concurrently with the other reward functions.
    Its client is made on the event loop that first awaits it (TRL's reward loop), one per loop; or
    pass ``client=AsyncRewardClient(...)`` to use your own on your own loop."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        models: Sequence[str] | None = None,
        aggregate: AggregateMethod = DEFAULT_AGGREGATE,
        weights: Mapping[str, float] | None = None,
        output: Output = "aggregate",
        model: str | None = None,
        reference_column: str | None = "reference",
        label_column: str | None = "auto",
        applicable: Applicable = None,
        reference_set: str | None = None,
        api_key: str | None = None,
        client: AsyncRewardClient | None = None,
        name: str = "rewardserve",
        **client_kwargs: Any,
    ):
        super().__init__(
            models=models,
            aggregate=aggregate,
            weights=weights,
            output=output,
            model=model,
            reference_column=reference_column,
            label_column=label_column,
            applicable=applicable,
            reference_set=reference_set,
            name=name,
        )
        self._client = client
        self._clients: PerLoop[AsyncRewardClient] = PerLoop()
        self._make_client = lambda: AsyncRewardClient(base_url, api_key=api_key, **client_kwargs)

    @property
    def client(self) -> AsyncRewardClient:
        """The client of the running event loop."""
        return self._client or self._clients.get(None, self._make_client)

    async def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        log_metric: Callable[[str, float], Any] | None = None,
        log_extra: Callable[[str, list[Any]], Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        rows, items = self._items(prompts, completions, kwargs)
        t0 = time.perf_counter()
        results = await self.client.score(items, **self._score_kwargs()) if items else []
        return self._rewards(len(prompts), rows, results, time.perf_counter() - t0, log_metric, log_extra)
