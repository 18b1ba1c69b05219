"""Reward functions for verl's ``custom_reward_function``, backed by rewardserve.

verl's default reward manager (``naive``) calls ``compute_score(data_source, solution_str,
ground_truth, extra_info)`` once per response; ``reward_model.reward_manager=batch`` calls
``compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)`` once per batch.
Responses arrive decoded with ``skip_special_tokens=True``; the prompt only through ``extra_info``.
verl passes ``custom_reward_function.reward_kwargs`` as keyword arguments (the path of this file:
``python -c 'import rewardclient.verl as m; print(m.__file__)'``)::

    custom_reward_function.path=/path/to/rewardclient/verl.py
    custom_reward_function.name=compute_score_batch             # or compute_score (naive manager)
    reward_model.reward_manager=batch
    +custom_reward_function.reward_kwargs.url=http://rm:8000
    +custom_reward_function.reward_kwargs.models=[helpful,harmless]

Keyword arguments: ``url`` (default ``http://127.0.0.1:8000``), ``api_key``, ``models`` (default:
every served model), ``aggregate`` (``lsc_sum`` | ``raw_sum`` | ``min``), ``weights``,
``reference_set``, ``prompt_key`` (the ``extra_info`` key holding the prompt; default ``"prompt"``,
then ``"question"``) and ``prompt_format`` (default: the service's, ``auto``). The prompt may be a
message list or a string, chat-templated or not: the service parses templated strings.

Each call returns ``{"score": aggregate, "<model>/raw": r, "<model>/transformed": u, …}``: verl uses
``"score"`` as the reward and logs the other keys. One client per (url, api_key) is kept per process.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .client import RewardClient, ScoreResult
from .protocol import DEFAULT_AGGREGATE

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PROMPT_KEYS = ("prompt", "question")
_OPTIONS = frozenset(
    {"url", "api_key", "models", "aggregate", "weights", "reference_set", "prompt_key", "prompt_format"}
)

_clients: dict[tuple[str, str | None], RewardClient] = {}
_lock = threading.Lock()


def get_client(url: str = DEFAULT_URL, api_key: str | None = None) -> RewardClient:
    """The process's client for (url, api_key), made on first use."""
    key = (url.rstrip("/"), api_key)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = RewardClient(key[0], api_key=api_key)
        return client


def prompt_from_extra_info(extra_info: Any, prompt_key: str | None = None) -> str | list[dict[str, str]]:
    """The prompt in ``extra_info[prompt_key]`` (default: ``"prompt"``, then ``"question"``): a string,
    or a sequence of ``{"role", "content"}`` mappings (a list, or the numpy array verl may hold)."""
    keys = (prompt_key,) if prompt_key else DEFAULT_PROMPT_KEYS
    if isinstance(extra_info, Mapping):
        for k in keys:
            value = extra_info.get(k)
            if value is None:
                continue
            if isinstance(value, str):
                return value
            if isinstance(value, Mapping):
                value = [value]
            try:
                return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
            except (TypeError, KeyError) as e:
                raise ValueError(
                    f"rewardserve: extra_info[{k!r}] is neither a string nor a list of "
                    f"{{'role', 'content'}} messages ({type(e).__name__}: {e})"
                ) from None
    what = (
        "None"
        if extra_info is None
        else f"keys {sorted(map(str, extra_info))}"
        if isinstance(extra_info, Mapping)
        else type(extra_info).__name__
    )
    raise ValueError(
        f"rewardserve: no prompt in extra_info (looked for {' or '.join(repr(k) for k in keys)}; "
        f"extra_info has {what}); put the prompt in the dataset's extra_info, or set "
        "custom_reward_function.reward_kwargs.prompt_key"
    )


def _options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - _OPTIONS)
    if unknown:
        raise TypeError(f"rewardserve: unknown reward_kwargs {unknown}; known: {sorted(_OPTIONS)}")
    return dict(kwargs)


def _score(solution_strs: Sequence[str], extra_infos: Sequence[Any], opts: dict[str, Any]) -> list[dict[str, float]]:
    items = [
        {"prompt": prompt_from_extra_info(e, opts.get("prompt_key")), "response": s}
        for s, e in zip(solution_strs, extra_infos, strict=True)
    ]
    models = opts.get("models")
    aggregate = {
        "method": opts.get("aggregate") or DEFAULT_AGGREGATE,
        **({"weights": dict(opts["weights"])} if opts.get("weights") else {}),
    }
    client = get_client(opts.get("url") or DEFAULT_URL, opts.get("api_key"))
    results = client.score(
        items,
        models=list(models) if models else None,
        aggregate=aggregate,
        reference_set=opts.get("reference_set"),
        prompt_format=opts.get("prompt_format"),
    )
    return [_as_dict(r) for r in results]


def _as_dict(r: ScoreResult) -> dict[str, float]:
    out = {"score": float(r.aggregate)}
    for m in r.raw:
        out[f"{m}/raw"] = float(r.raw[m])
        out[f"{m}/transformed"] = float(r.transformed[m])
    return out


def compute_score(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> dict[str, float]:
    """verl's default (naive) reward manager: one response. ``data_source`` and ``ground_truth`` are
    not used (reward models need none)."""
    return _score([solution_str], [extra_info], _options(kwargs))[0]


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """``reward_model.reward_manager=batch``: every response of the batch in one scoring request
    (chunked by the client), results in order."""
    opts = _options(kwargs)
    if not len(solution_strs):
        return []
    return _score(
        list(solution_strs), list(extra_infos) if extra_infos is not None else [None] * len(solution_strs), opts
    )
