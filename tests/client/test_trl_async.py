"""TRL's reward functions: ``AsyncRewardServeReward`` (awaited by TRL concurrently with the other
reward functions) and ``RewardServeReward``, called as ``GRPOTrainer._calculate_rewards`` calls them
and inside a real ``GRPOTrainer`` step, against a live server: the rewards of ``/v1/score``, the label
column sent as ``label``, per-model values in ``log_extra`` and ``log_metric``, ``None`` where a row is
marked not applicable."""

from __future__ import annotations

import asyncio
import math

import pytest
from trl.trainer.utils import is_async_callable

from rewardclient import AsyncRewardClient, RewardClient, canonical_prompt
from rewardclient.trl import AsyncRewardServeReward, RewardServeReward, _response_text
from rewardlab import tiny_models

from .trainer_calls import ScoreSpy

TOL = 1e-4
MODELS = ["a", "cls"]
PROMPTS = [[{"role": "user", "content": "How much is 2 + 2?"}]] * 2 + [[{"role": "user", "content": "Say hi."}]] * 2
COMPLETIONS = [
    [{"role": "assistant", "content": "4"}],
    [{"role": "assistant", "content": "Five, I think."}],
    [{"role": "assistant", "content": "Hi!"}],
    [{"role": "assistant", "content": "Go away."}],
]
COLUMNS = {
    "answer": ["four-gt", "four-gt", None, None],
    "has_answer": [True, True, False, False],
    "topic": ["math"] * 2 + ["chat"] * 2,
}


def _trl_call(fn, **columns):
    """What ``_calculate_rewards`` passes: prompts, completions, completion_ids, every dataset column,
    trainer_state, log_extra and log_metric; ``(rewards, extra columns, metrics)``."""
    extra, metrics = {}, {}
    kwargs = dict(
        prompts=PROMPTS,
        completions=COMPLETIONS,
        completion_ids=[[1, 2]] * len(PROMPTS),
        trainer_state=None,
        log_extra=lambda column, values: extra.setdefault(column, []).extend(values),
        log_metric=lambda name, value: metrics.setdefault(name, []).append(value),
        **{**COLUMNS, **columns},
    )
    return fn(**kwargs), extra, metrics


def test_trl_sees_the_async_adapter_as_async_and_the_sync_one_as_sync(server):
    assert is_async_callable(AsyncRewardServeReward(server.url)) and not is_async_callable(
        RewardServeReward(server.url)
    )


def test_both_adapters_give_the_score_rewards_labels_logs_and_none(server):
    with RewardClient(server.url) as c:
        want = c.score([(p, c_[0]["content"]) for p, c_ in zip(PROMPTS, COMPLETIONS)], models=MODELS)
    other_calls = []

    async def other_reward(prompts, completions, **kwargs):  # another async reward function of the trainer
        other_calls.append(len(prompts))
        await asyncio.sleep(0.01)
        return [0.0] * len(prompts)

    async_fn = AsyncRewardServeReward(server.url, models=MODELS, applicable="has_answer")
    sync_fn = RewardServeReward(server.url, models=MODELS, applicable=lambda row: row["topic"] == "math")

    async def trl_gather():  # TRL runs its async reward functions with asyncio.gather on its own loop
        (coro, extra, metrics), other = _trl_call(async_fn), _trl_call(other_reward)[0]
        rewards, _ = await asyncio.gather(coro, other)
        return rewards, extra, metrics

    with ScoreSpy(server.state.scorer) as spy:
        results = [asyncio.run(trl_gather()), _trl_call(sync_fn)]
    assert other_calls == [4]
    deltas = []
    for rewards, extra, metrics in results:
        assert rewards[2:] == [None, None]  # not applicable: None, which TRL turns into NaN
        deltas += [abs(r - w.aggregate) for r, w in zip(rewards[:2], want)]
        for m in MODELS:
            for kind in ("raw", "transformed"):
                column = extra[f"rewardserve/{m}/{kind}"]
                assert column[2:] == [None, None]
                deltas += [abs(v - getattr(w, kind)[m]) for v, w in zip(column[:2], want)]
                (mean,) = metrics[f"rewardserve/{m}/{kind}"]
                assert mean == pytest.approx(sum(getattr(w, kind)[m] for w in want[:2]) / 2, abs=1e-6)
        assert {"rewardserve/aggregate", "rewardserve/seconds", "rewardserve/items_per_s"} <= set(metrics)
        assert "four-gt" not in str(extra) + str(metrics)  # labels are sent, never logged
    print(f"max |Δ| TRL adapters (async and sync, as _calculate_rewards calls them): {max(deltas):.2e}")
    assert max(deltas) <= TOL
    # only the applicable rows were sent, each with the answer column as its label
    assert [(canonical_prompt(it.prompt), it.response, it.label) for it in spy.items] == [
        (canonical_prompt(PROMPTS[0]), "4", "four-gt"),
        (canonical_prompt(PROMPTS[1]), "Five, I think.", "four-gt"),
    ] * 2


def test_label_column_choice(server):
    fn = RewardServeReward(server.url, models=["a"])
    with ScoreSpy(server.state.scorer) as spy:
        _trl_call(fn, solution=["s"] * 4)  # "answer" comes first
        _trl_call(RewardServeReward(server.url, models=["a"], label_column="solution"), solution=[{"x": 1}] * 4)
        _trl_call(RewardServeReward(server.url, models=["a"], label_column=None))
    labels = [it.label for it in spy.items]
    assert labels == ["four-gt", "four-gt", None, None] + [{"x": 1}] * 4 + [None] * 4
    with pytest.raises(ValueError, match=r"label_column 'gold' is not a dataset column; the columns are \['answer'"):
        _trl_call(RewardServeReward(server.url, label_column="gold"))
    with pytest.raises(ValueError, match=r"applicable 'maths' is not a dataset column"):
        _trl_call(RewardServeReward(server.url, applicable="maths"))


def test_no_applicable_row_sends_nothing(server):
    fn = AsyncRewardServeReward(server.url, applicable=lambda row: False)
    with ScoreSpy(server.state.scorer) as spy:
        rewards, extra, metrics = asyncio.run(_trl_call(fn)[0]), {}, {}
    assert rewards == [None] * 4 and not spy.requests and not extra and not metrics


def test_async_adapter_on_new_event_loops_and_with_its_own_client(server):
    """A client belongs to its event loop: each new loop gets its own; a given client is used as is."""
    fn = AsyncRewardServeReward(server.url, models=["a"], output="raw", model="a")
    first = asyncio.run(_trl_call(fn)[0])
    assert asyncio.run(_trl_call(fn)[0]) == first

    async def own():
        async with AsyncRewardClient(server.url) as c:
            return await _trl_call(AsyncRewardServeReward(client=c, models=["a"], output="raw", model="a"))[0]

    assert asyncio.run(own()) == first


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return str(tiny_models.make_causal_lm(tmp_path_factory.mktemp("policy") / "lm", seed=11))


def test_grpo_trainer_step_with_the_async_adapter(server, policy, tmp_path):
    """One real GRPOTrainer step: the async adapter (every row) and the sync one (rows whose
    has_answer is true) side by side; TRL awaits the first on its reward loop, logs both."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows = [
        {"prompt": [{"role": "user", "content": "How much is 2 + 2?"}], "answer": "4", "has_answer": True},
        {"prompt": [{"role": "user", "content": "Say hi."}], "answer": None, "has_answer": False},
    ]
    async_fn = AsyncRewardServeReward(server.url, models=MODELS, name="rs_async")
    sync_fn = RewardServeReward(server.url, models=["a"], applicable="has_answer", name="rs_sync")
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        learning_rate=1e-5,
        beta=0.05,
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=8,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=policy, reward_funcs=[async_fn, sync_fn], args=args, train_dataset=Dataset.from_list(rows * 2)
    )
    with ScoreSpy(server.state.scorer) as spy:
        trainer.train()
    logged = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    for key in (
        "rewards/rs_async/mean",
        "rewards/rs_sync/mean",
        "rs_async/a/raw",
        "rs_async/cls/transformed",
        "rs_sync/a/raw",
    ):
        assert key in logged and math.isfinite(logged[key]), key
    # rs_sync: NaN (TRL's None) exactly on the rows without an answer; rs_async: every row
    rewards = trainer._logs["rewards"]
    assert all(math.isnan(r) for r, p in zip(rewards["rs_sync"], trainer._logs["prompt"]) if "hi" in str(p))
    assert all(math.isfinite(r) for r in rewards["rs_async"]) and len(rewards["rs_async"]) == 4
    assert trainer._logs["extra"]["rs_async/a/raw"] and None in trainer._logs["extra"]["rs_sync/a/raw"]
    # the async function's reward equals the logged raw and transformed values' aggregate: lsc_sum
    for r, u_a, u_cls in zip(
        rewards["rs_async"],
        trainer._logs["extra"]["rs_async/a/transformed"],
        trainer._logs["extra"]["rs_async/cls/transformed"],
    ):
        assert r == pytest.approx(u_a + u_cls, abs=1e-4)
    # the rewards TRL got are those of /v1/score for the same conversations
    with RewardClient(server.url) as c:
        want = c.score(
            [(p, _response_text(x)) for p, x in zip(trainer._logs["prompt"], trainer._logs["completion"])],
            models=MODELS,
        )
    delta = max(abs(r - w.aggregate) for r, w in zip(rewards["rs_async"], want, strict=True))
    print(f"max |Δ| TRL GRPOTrainer step, AsyncRewardServeReward (float32 in TRL): {delta:.2e}")
    assert delta <= TOL
    # labels: the answer column, on every row the async function sent and on the sync function's rows
    labels = [it.label for it in spy.items]
    assert labels.count("4") == 4 and labels.count(None) == 2 and len(labels) == 6
    assert torch.isfinite(torch.tensor(logged["loss"]))
