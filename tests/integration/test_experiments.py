"""``rewardserve experiment best-of-k|rlhf`` end to end on tiny models and the shared prompt set."""

from __future__ import annotations

import json

import pytest

from rewardlab import tiny_models
from rewardlab.experiments.best_of_k import BestOfKConfig, run_best_of_k
from rewardlab.experiments.rlhf import RLHFExperimentConfig, run_rlhf_experiment
from rewardserve.cli import build_parser

from ..conftest import SHARED_DATA, tiny_settings

MODELS = ["a", "cls"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return str(tiny_models.make_causal_lm(tmp_path_factory.mktemp("policy") / "lm", seed=11))


def _bok(policy, out, **kw) -> BestOfKConfig:
    return BestOfKConfig(
        prompts=str(SHARED_DATA / "prompts.jsonl.gz"),
        n_prompts=6,
        n=4,
        calibration_samples=3,
        ks=[1, 2, 4],
        max_new_tokens=8,
        batch_prompts=4,
        policy=policy,
        models=MODELS,
        out_dir=str(out),
        bootstrap=200,
        **kw,
    )


@pytest.fixture(scope="module")
def best_of_k(tiny, policy, tmp_path_factory):
    root = tmp_path_factory.mktemp("bok")
    settings = tiny_settings(tiny, root)
    return run_best_of_k(_bok(policy, root / "a"), settings), root, settings


def test_best_of_k_outputs_and_invariants(best_of_k):
    result, root, _ = best_of_k
    out = root / "a"
    for f in ("samples.jsonl", "meta.json", "results.json", "results.md", "best_of_k.png"):
        assert (out / f).stat().st_size > 0, f
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and result["sources"] == {"alpaca_eval": 3, "hh-rlhf": 3}
    assert all(
        len(r["candidates"]) == 4 and len(r["calibration"]) == 3 and len(r["raw_candidates"]["a"]) == 4 for r in rows
    )
    assert [r["k"] for r in result["table"]] == [1, 2, 4]
    k1 = result["table"][0]
    # k = 1: both methods take the first sample
    assert k1["raw_sum"] == k1["lsc_sum"]
    assert k1["lsc_minus_raw"]["good_on_all"]["mean"] == 0.0 and k1["picks_differ"] == 0
    # best of all n by raw_sum has the highest mean raw sum of any k
    sums = [sum(r["raw_sum"]["raw"][m]["mean"] for m in MODELS) for r in result["table"]]
    assert sums[-1] == max(sums)
    for r in result["table"]:
        assert (
            r["raw_sum"]["good_on_all"]["lo"]
            <= r["raw_sum"]["good_on_all"]["mean"]
            <= r["raw_sum"]["good_on_all"]["hi"]
        )
    assert result["worst_decile_prompts"] == 1


def test_best_of_k_resumes_and_reproduces(best_of_k, policy, tmp_path):
    result, root, settings = best_of_k
    samples = (root / "a" / "samples.jsonl").read_text()
    again = run_best_of_k(_bok(policy, root / "a"), settings)  # everything on file: nothing generated
    assert (root / "a" / "samples.jsonl").read_text() == samples
    assert again["table"] == result["table"]
    fresh = run_best_of_k(_bok(policy, tmp_path / "fresh"), settings)  # same seed, new folder: same samples
    assert (tmp_path / "fresh" / "samples.jsonl").read_text() == samples
    assert fresh["table"] == result["table"]
    other = run_best_of_k(_bok(policy, root / "a", seed=1), settings)  # another seed: the file starts over
    assert (root / "a" / "samples.jsonl").read_text() != samples and other["config"]["seed"] == 1
    run_best_of_k(_bok(policy, root / "a"), settings)


def test_rlhf_experiment_runs_each_arm_and_skips_finished_runs(best_of_k, server, policy, tmp_path):
    _, root, _ = best_of_k
    cfg = RLHFExperimentConfig(
        best_of_k_dir=str(root / "a"),
        prompts=str(SHARED_DATA / "prompts.jsonl.gz"),
        eval_prompts=4,
        train_prompts=4,
        policy=policy,
        betas=[0.1],
        seeds=[0],
        steps=1,
        max_completion_length=8,
        calibration_samples=3,
        url=server.url,
        models=MODELS,
        out_dir=str(tmp_path / "b"),
        bootstrap=100,
    )
    result = run_rlhf_experiment(cfg)
    assert [(g["utility"], g["beta"]) for g in result["summary"]] == [("lsc_sum", 0.1), ("raw_sum", 0.1)]
    for g in result["summary"]:
        assert set(g["win_rate"]) == set(MODELS) and 0.0 <= g["win_rate"]["a"]["mean"] <= 1.0
        assert g["kl"][0] is not None and g["per_seed"][0]["wall_seconds"] > 0
    assert result["calibration"]["calibrated"] == 4
    for f in (
        "results.json",
        "results.md",
        "rlhf.png",
        "train_prompts.jsonl",
        "lsc_sum-beta0.1-seed0/result.json",
        "raw_sum-beta0.1-seed0/metrics.jsonl",
    ):
        assert (tmp_path / "b" / f).stat().st_size > 0, f
    stamp = (tmp_path / "b" / "lsc_sum-beta0.1-seed0" / "result.json").stat().st_mtime_ns
    again = run_rlhf_experiment(cfg)
    assert (tmp_path / "b" / "lsc_sum-beta0.1-seed0" / "result.json").stat().st_mtime_ns == stamp
    assert again["summary"] == result["summary"] and again["calibration"]["skipped"] == 4
    with pytest.raises(ValueError, match="sampling must match"):
        run_rlhf_experiment(
            RLHFExperimentConfig(**{**cfg.__dict__, "max_completion_length": 16, "out_dir": str(tmp_path / "c")})
        )


def test_experiment_command_line_parses_typed_lists():
    a = build_parser().parse_args(["experiment", "best-of-k", "--ks", "1", "4", "--n-prompts", "10"])
    assert a.ks == [1, 4] and a.n_prompts == 10
    b = build_parser().parse_args(["experiment", "rlhf", "--betas", "0.01", "0.1", "--utilities", "raw_sum", "lsc_sum"])
    assert b.betas == [0.01, 0.1] and b.utilities == ["raw_sum", "lsc_sum"]
