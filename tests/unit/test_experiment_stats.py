"""The experiments' statistics: bootstrap intervals, references, best-of-k picks and their metrics."""

import numpy as np
import pytest

from rewardlab.experiments import stats
from rewardserve import lsc


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=50), rng.normal(size=5000)
    a, b = stats.bootstrap_ci(small, 500, seed=3), stats.bootstrap_ci(large, 500, seed=3)
    assert a["mean"] == pytest.approx(small.mean()) and a["n"] == 50
    assert a["lo"] < a["mean"] < a["hi"] and b["lo"] < b["mean"] < b["hi"]
    assert (b["hi"] - b["lo"]) < (a["hi"] - a["lo"]) / 5
    # the standard error of a mean of N(0, 1) samples: the 95 % interval is about ±1.96/√n
    assert (b["hi"] - b["lo"]) == pytest.approx(2 * 1.96 / np.sqrt(5000), rel=0.15)
    assert stats.bootstrap_ci(small, 500, seed=3) == a  # seeded
    c = stats.bootstrap_ci([2.0] * 10)
    assert c["lo"] == c["hi"] == c["mean"] == 2.0
    assert stats.bootstrap_ci([])["mean"] is None


def test_references_are_per_prompt_per_model_quantiles():
    calib = np.random.default_rng(2).normal(size=(5, 8, 2))
    ref = stats.references(calib, 0.85)
    assert ref.shape == (5, 2)
    assert np.allclose(ref, np.quantile(calib, 0.85, axis=1))


def test_lsc_sum_picks_the_response_good_on_both_where_raw_sum_lets_one_model_buy_off_the_other():
    ref = np.zeros((1, 2))
    # candidate 0: excellent on model 1, bad on model 2 (raw sum 2.0); candidate 1: good on both (sum 1.6)
    cand = np.array([[[5.0, -3.0], [0.8, 0.8]]])
    lengths = np.array([[10, 20]])
    assert stats.pick(cand, ref, "raw_sum", 2).tolist() == [0]
    assert stats.pick(cand, ref, "lsc_sum", 2).tolist() == [1]
    u = stats.utilities(cand, ref, "lsc_sum")
    assert u[0, 1] == pytest.approx(2 * float(lsc.log_sigmoid(0.8)))
    for method, good in [("raw_sum", 0.0), ("lsc_sum", 1.0)]:
        m = stats.per_prompt_metrics(cand, ref, lengths, stats.pick(cand, ref, method, 2))
        assert m["good_on_all"].tolist() == [good]
    # k limits the choice to the first k candidates
    assert stats.pick(cand, ref, "lsc_sum", 1).tolist() == [0]
    with pytest.raises(ValueError):
        stats.utilities(cand, ref, "max")


def test_worst_decile_and_gain():
    rng = np.random.default_rng(4)
    cand = rng.normal(size=(30, 4, 2))
    ref = rng.normal(size=(30, 2))
    mask = stats.worst_decile(cand, ref)
    assert mask.sum(axis=0).tolist() == [3, 3]
    quality = cand.mean(axis=1) - ref
    for m in range(2):
        assert quality[mask[:, m], m].max() <= quality[~mask[:, m], m].min()
    idx = np.array([1] * 30)
    per = stats.per_prompt_metrics(cand, ref, np.ones((30, 4)), idx)
    assert np.allclose(per["gain"], cand[:, 1] - cand.mean(axis=1))
    assert np.allclose(per["good_on_all"], np.all(cand[:, 1] > ref, axis=1))
