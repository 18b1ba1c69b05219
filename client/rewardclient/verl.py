"""Reward functions for verl's ``custom_reward_function``, backed by rewardserve.

verl's reward loop (``verl/experimental/reward_loop/reward_manager/``: ``naive``, ``dapo``, ``gdpo``)
calls ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` once per response,
many at once; it awaits the function when it is a coroutine function, so ``compute_score_async``
keeps every response of a worker in flight on one async client and the service batches them.
``compute_score`` is the same, synchronous (verl runs it in a thread pool). When verl serves a
reward model of its own it adds ``reward_router_address=`` and ``reward_model_tokenizer=``: both are
accepted and ignored. The legacy ``batch`` manager (``verl/workers/reward_manager/``) calls
``compute_score_batch(data_sources=, solution_strs=, ground_truths=, extra_infos=)`` once per batch.

Responses arrive decoded with ``skip_special_tokens=True``; the prompt only through ``extra_info``.
``ground_truth`` goes to the service as the item's ``label`` (checks read it; reward models ignore
it). verl passes ``custom_reward_function.reward_kwargs`` as keyword arguments::

    reward.custom_reward_function.path=pkg://rewardclient.verl      # or the file: rewardclient/verl.py
    reward.custom_reward_function.name=compute_score_async          # or compute_score
    +reward.custom_reward_function.reward_kwargs.url=http://rm:8000
    +reward.custom_reward_function.reward_kwargs.models=[helpful,harmless]

(verl releases before the ``reward:`` section: ``custom_reward_function.*`` and
``reward_model.reward_manager=batch`` with ``compute_score_batch``; current verl still maps those keys.)

Keyword arguments: ``url`` (default ``http://127.0.0.1:8000``), ``api_key``, ``models`` (default:
every served model), ``aggregate`` (``lsc_sum`` | ``raw_sum`` | ``min``), ``weights``,
``reference_set``, ``prompt_key`` (the ``extra_info`` key holding the prompt; default ``"prompt"``,
then ``"question"``), ``prompt_format`` (default: the service's, ``auto``) and ``max_concurrency``
(``compute_score_async``: requests in flight at once per event loop; default 64). The prompt may be a
message list or a string, chat-templated or not: the service parses templated strings. Any other
keyword is an error that names the known ones.

Each call returns ``{"score": aggregate, "<model>/raw": r, "<model>/transformed": u, …}``: verl uses
``"score"`` as the reward and logs the other keys. One client per (url, api_key) is kept per process
(per event loop for ``compute_score_async``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

# absolute imports: verl may load this file by its path, as a module outside the package
from rewardclient._per_loop import PerLoop
from rewardclient.client import AsyncRewardClient, RewardClient, ScoreResult
from rewardclient.protocol import DEFAULT_AGGREGATE, plain_label

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PROMPT_KEYS = ("prompt", "question")
DEFAULT_MAX_CONCURRENCY = 64
_OPTIONS = frozenset(
    {
        "url",
        "api_key",
        "models",
        "aggregate",
        "weights",
        "reference_set",
        "prompt_key",
        "prompt_format",
        "max_concurrency",
    }
)
# what verl's reward loop adds when it serves a reward model of its own; not used here
VERL_KEYWORDS = frozenset({"reward_router_address", "reward_model_tokenizer"})

_clients: dict[tuple[str, str | None], RewardClient] = {}
_async_clients: PerLoop[AsyncRewardClient] = PerLoop()
_lock = threading.Lock()


def get_client(url: str = DEFAULT_URL, api_key: str | None = None) -> RewardClient:
    """The process's client for (url, api_key), made on first use."""
    key = (url.rstrip("/"), api_key)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = RewardClient(key[0], api_key=api_key)
        return client


def get_async_client(
    url: str = DEFAULT_URL, api_key: str | None = None, max_concurrency: int = DEFAULT_MAX_CONCURRENCY
) -> AsyncRewardClient:
    """The running event loop's async client for (url, api_key, max_concurrency), made on first use."""
    key = (url.rstrip("/"), api_key, max_concurrency)
    return _async_clients.get(key, lambda: AsyncRewardClient(key[0], api_key=api_key, max_concurrency=max_concurrency))


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
    unknown = sorted(set(kwargs) - _OPTIONS - VERL_KEYWORDS)
    if unknown:
        raise TypeError(f"rewardserve: unknown reward_kwargs {unknown}; known: {sorted(_OPTIONS)}")
    return {k: v for k, v in kwargs.items() if k in _OPTIONS}


def _request(
    solution_strs: Sequence[str], ground_truths: Sequence[Any], extra_infos: Sequence[Any], opts: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The items (ground truth as label) and the options of one scoring call."""
    items = []
    for s, g, e in zip(solution_strs, ground_truths, extra_infos, strict=True):
        item = {"prompt": prompt_from_extra_info(e, opts.get("prompt_key")), "response": s}
        label = plain_label(g)
        if label is not None:
            item["label"] = label
        items.append(item)
    models = opts.get("models")
    options = {
        "models": list(models) if models else None,
        "aggregate": {
            "method": opts.get("aggregate") or DEFAULT_AGGREGATE,
            **({"weights": dict(opts["weights"])} if opts.get("weights") else {}),
        },
        "reference_set": opts.get("reference_set"),
        "prompt_format": opts.get("prompt_format"),
    }
    return items, options


def _as_dict(r: ScoreResult) -> dict[str, float]:
    out = {"score": float(r.aggregate)}
    for m in r.raw:
        out[f"{m}/raw"] = float(r.raw[m])
        out[f"{m}/transformed"] = float(r.transformed[m])
    return out


def _url(opts: Mapping[str, Any]) -> str:
    return str(opts.get("url") or DEFAULT_URL)


def compute_score(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> dict[str, float]:
    """One response (verl's reward loop, synchronous; the legacy ``naive`` manager). ``data_source`` is
    not used; ``ground_truth`` is sent as the item's label."""
    opts = _options(kwargs)
    items, options = _request([solution_str], [ground_truth], [extra_info], opts)
    return _as_dict(get_client(_url(opts), opts.get("api_key")).score(items, **options)[0])


async def compute_score_async(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
) -> dict[str, float]:
    """``compute_score`` as a coroutine function: verl's reward loop awaits it, many responses at once,
    on one async client per worker (at most ``max_concurrency`` requests in flight)."""
    opts = _options(kwargs)
    items, options = _request([solution_str], [ground_truth], [extra_info], opts)
    client = get_async_client(
        _url(opts), opts.get("api_key"), int(opts.get("max_concurrency") or DEFAULT_MAX_CONCURRENCY)
    )
    return _as_dict((await client.score(items, **options))[0])


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any] | None = None,
    extra_infos: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """The legacy ``batch`` manager: every response of the batch in one scoring request (chunked by the
    client), results in order; ``ground_truths[i]`` is item i's label."""
    opts = _options(kwargs)
    n = len(solution_strs)
    if not n:
        return []
    items, options = _request(
        list(solution_strs),
        list(ground_truths) if ground_truths is not None else [None] * n,
        list(extra_infos) if extra_infos is not None else [None] * n,
        opts,
    )
    return [_as_dict(r) for r in get_client(_url(opts), opts.get("api_key")).score(items, **options)]
