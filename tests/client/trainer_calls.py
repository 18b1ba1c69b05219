"""How the trainers call a reward function or service, where their own code cannot run here (verl
needs Ray, slime needs SGLang and Megatron): the same calls, arguments and retry loops as their
current releases, written from reading them (verl 0.9.1 ``verl/trainer/ppo/reward.py`` and
``verl/experimental/reward_loop/reward_manager/naive.py``; slime ``slime/rollout/rm_hub/__init__.py``).
OpenRLHF's and TRL's own code runs in the tests themselves. And ``ScoreSpy``: what the server's
scoring pipeline receives."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp

# -- verl ------------------------------------------------------------------------------------------


def verl_load_reward_fn(path: str, name: str, reward_kwargs: Mapping[str, Any]) -> Callable[..., Any]:
    """verl's ``get_custom_reward_fn``: ``reward.custom_reward_function.path`` (a file, ``file://`` or
    ``pkg://``) and ``.name``; ``reward_kwargs`` merged into every call, winning over the call's own
    keywords; the wrapper is a coroutine function when the loaded function is one."""
    if path.startswith("pkg://"):
        module = importlib.import_module(path[len("pkg://") :].replace("/", "."))
    else:
        path = path.removeprefix("file://")
        spec = importlib.util.spec_from_file_location(f"custom_module_{hash(os.path.abspath(path))}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    raw_fn = getattr(module, name)
    extra = dict(reward_kwargs)

    def call(*args: Any, **kwargs: Any) -> Any:
        return raw_fn(*args, **{**kwargs, **extra})

    async def call_async(*args: Any, **kwargs: Any) -> Any:
        return await raw_fn(*args, **{**kwargs, **extra})

    return partial(call_async) if inspect.iscoroutinefunction(raw_fn) else partial(call)


@dataclass
class VerlItem:
    """One row of a verl batch as the reward manager reads it."""

    data_source: str
    response: str  # decoded with skip_special_tokens=True
    ground_truth: Any  # non_tensor_batch["reward_model"]["ground_truth"]
    extra_info: dict[str, Any] = field(default_factory=dict)
    num_turns: int | None = 2  # non_tensor_batch["__num_turns__"]
    reward_scores: dict[str, Any] = field(default_factory=dict)  # non_tensor_batch["reward_scores"]


async def verl_reward_loop(
    compute_score: Callable[..., Any],
    batch: Sequence[VerlItem],
    reward_router_address: str | None = None,
    reward_model_tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """verl's reward loop over a batch: ``RewardLoopWorker.compute_score_batch`` runs the ``naive``
    manager's ``run_single`` for every row at once (``asyncio.gather``); each awaits ``compute_score``
    when ``inspect.iscoroutinefunction`` says so, else runs it in the loop's default thread pool.
    ``extra_info`` gets ``num_turns`` and ``rollout_reward_scores``; ``reward_router_address`` and
    ``reward_model_tokenizer`` are added when verl serves a reward model (an address is set)."""
    loop = asyncio.get_running_loop()
    is_async = inspect.iscoroutinefunction(compute_score)

    async def run_single(item: VerlItem) -> dict[str, Any]:
        extra_info = dict(item.extra_info)
        extra_info["num_turns"] = item.num_turns
        extra_info["rollout_reward_scores"] = item.reward_scores
        extra = (
            {"reward_router_address": reward_router_address, "reward_model_tokenizer": reward_model_tokenizer}
            if reward_router_address is not None
            else {}
        )
        kwargs = dict(
            data_source=item.data_source,
            solution_str=item.response,
            ground_truth=item.ground_truth,
            extra_info=extra_info,
            **extra,
        )
        if is_async:
            result = await compute_score(**kwargs)
        else:
            result = await loop.run_in_executor(None, lambda: compute_score(**kwargs))
        score = result["score"] if isinstance(result, dict) else result
        return {"reward_score": score, "reward_extra_info": result if isinstance(result, dict) else {"acc": score}}

    return list(await asyncio.gather(*(asyncio.create_task(run_single(it)) for it in batch)))


# -- slime -----------------------------------------------------------------------------------------


class SlimeRemoteRM:
    """slime's ``remote_rm``: one shared aiohttp session (64 connections, 120 s total timeout); per
    sample one POST of ``{"prompt", "response", "label"}`` to ``--rm-url``; any failure (a connection
    error, any status ≥ 400) is retried up to 10 tries with backoff min(2^attempt, 30) + U(0, 1) s;
    the JSON answer is the reward (``--reward-key`` picks a field). ``attempts`` records each try."""

    def __init__(self, rm_url: str, max_retries: int = 10):
        self.rm_url, self.max_retries = rm_url, max_retries
        self.session: aiohttp.ClientSession | None = None
        self.attempts: list[str] = []

    async def __aenter__(self) -> SlimeRemoteRM:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def __call__(self, prompt: Any, response: str, label: Any) -> Any:
        assert self.session is not None
        payload = {"prompt": prompt, "response": response, "label": label}
        for attempt in range(self.max_retries):
            try:
                async with self.session.post(self.rm_url, json=payload) as resp:
                    resp.raise_for_status()
                    answer = await resp.json()
                    self.attempts.append(str(resp.status))
                    return answer
            except Exception as e:
                self.attempts.append(str(getattr(e, "status", type(e).__name__)))
                if attempt + 1 >= self.max_retries:
                    raise
                await asyncio.sleep(min(2**attempt, 30) + random.random())


def slime_reward_value(reward: Any, reward_key: str | None) -> Any:
    """``Sample.get_reward_value``: the answer itself, or its ``--reward-key`` field."""
    return reward if not reward_key else reward[reward_key]


# -- what the server's pipeline receives -----------------------------------------------------------


class ScoreSpy:
    """Wraps a live server's ``Scorer.score``: records the items each request hands the scoring
    pipeline (labels included) and how many requests are inside it at once. With ``hold=N`` a
    request waits (at most ``hold_timeout`` s) until N are inside, which shows a client keeps N in
    flight at once."""

    def __init__(self, scorer: Any, hold: int | None = None, hold_timeout: float = 10.0):
        self.scorer, self.hold, self.hold_timeout = scorer, hold, hold_timeout
        self.requests: list[list[Any]] = []
        self.in_flight = self.max_in_flight = 0
        self._all_in: asyncio.Event | None = None

    @property
    def items(self) -> list[Any]:
        return [it for req in self.requests for it in req]

    async def _score(self, items: Any, *args: Any, **kwargs: Any) -> Any:
        # the pipeline's ScoreRequest (its items), or items as such
        self.requests.append(list(items.items if hasattr(items, "items") else items))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold:
                if self._all_in is None:
                    self._all_in = asyncio.Event()
                if self.in_flight >= self.hold:
                    self._all_in.set()
                try:
                    await asyncio.wait_for(self._all_in.wait(), self.hold_timeout)
                except TimeoutError:
                    pass
            return await self._original(items, *args, **kwargs)
        finally:
            self.in_flight -= 1

    def __enter__(self) -> ScoreSpy:
        self._original = self.scorer.score
        self.scorer.score = self._score
        return self

    def __exit__(self, *exc: object) -> None:
        del self.scorer.score  # the class's method again
