"""The KL-curve math: tilted distributions, their KL, best-of-n weights, matched-KL β, interpolation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rewardlab.experiments import kl


def test_tilted_limits_and_kl_range():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(5, 32))
    flat = kl.tilted(u, 1e6)
    assert np.allclose(flat, 1 / 32, atol=1e-5)
    assert np.allclose(kl.kl_to_uniform(flat), 0.0, atol=1e-8)
    sharp = kl.tilted(u, 1e-6)
    assert np.array_equal(sharp.argmax(axis=1), u.argmax(axis=1))
    assert np.allclose(kl.kl_to_uniform(sharp), np.log(32), atol=1e-6)  # all mass on one of 32
    # KL falls monotonically as β grows
    kls = [kl.kl_to_uniform(kl.tilted(u, b)).mean() for b in (0.01, 0.1, 1, 10)]
    assert all(a > b for a, b in zip(kls, kls[1:]))


def test_tilted_is_the_regularised_optimum():
    """π_β maximises E_π[u] − β KL(π ‖ uniform): no random distribution on the pool does better."""
    rng = np.random.default_rng(1)
    u = rng.normal(size=(1, 8))
    beta = 0.3
    pi = kl.tilted(u, beta)
    best = kl.expect(pi, u)[0] - beta * kl.kl_to_uniform(pi)[0]
    for _ in range(2000):
        q = rng.dirichlet(np.ones(8))[None]
        assert kl.expect(q, u)[0] - beta * kl.kl_to_uniform(q)[0] <= best + 1e-12


def test_tilted_is_stable_for_huge_utilities():
    pi = kl.tilted(np.array([[1e300, 1e300 - 1e290, -1e300]]), 1e-3)
    assert np.all(np.isfinite(pi)) and pi.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kl.tilted(np.zeros((1, 3)), 0.0)


def test_best_of_n_weights_match_enumeration():
    """Exact probabilities against enumerating every ordered n-tuple of draws (ties share equally)."""
    u = np.array([[0.3, -1.0, 2.0, 0.3, 0.0]])
    for n in (1, 2, 3):
        counts = np.zeros(5)
        for draw in itertools.product(range(5), repeat=n):
            vals = u[0, list(draw)]
            winners = sorted({d for d in draw if u[0, d] == vals.max()})
            for w in winners:
                counts[w] += 1 / len(winners)
        expected = counts / 5**n
        assert np.allclose(kl.best_of_n_weights(u, n)[0], expected)
    assert np.allclose(kl.best_of_n_weights(u, 1), 0.2)


def test_best_of_n_kl_formula():
    assert kl.best_of_n_kl(1) == 0.0
    assert kl.best_of_n_kl(2) == pytest.approx(np.log(2) - 0.5)
    assert kl.best_of_n_kl(16) == pytest.approx(np.log(16) - 15 / 16)
    assert kl.best_of_n_kl(32) > 2.0


def test_win_rate_and_beta_for_kl():
    gold = np.array([[0.0, 1.0, 2.0, 3.0]])
    uniform = np.full((1, 4), 0.25)
    assert kl.win_rate(uniform, gold)[0] == pytest.approx(0.5)  # a base sample against a base sample
    top = np.array([[0.0, 0.0, 0.0, 1.0]])
    assert kl.win_rate(top, gold)[0] == pytest.approx(3.5 / 4)  # beats 3, ties itself
    rng = np.random.default_rng(2)
    u = rng.normal(size=(20, 32))
    for target in (0.05, 0.5, 2.0):
        b = kl.beta_for_kl(u, target)
        assert kl.kl_to_uniform(kl.tilted(u, b)).mean() == pytest.approx(target, rel=1e-4)


def test_interpolate_inside_and_outside():
    out = kl.interpolate(np.array([1.0, 0.0, 2.0]), np.array([10.0, 0.0, 20.0]), np.array([-1.0, 0.5, 1.5, 3.0]))
    assert np.isnan(out[0]) and np.isnan(out[3])
    assert out[1] == pytest.approx(5.0) and out[2] == pytest.approx(15.0)


def _synthetic(seed=0, P=40, N=16, K=8, M=2):
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=(P, 1, M))
    gold = quality + rng.normal(size=(P, N, M))
    proxy = gold + 0.7 * rng.normal(size=(P, N, M))  # a noisy proxy of the judge
    gold_ref_s = quality + rng.normal(size=(P, K, M))
    proxy_ref_s = gold_ref_s + 0.7 * rng.normal(size=(P, K, M))
    lengths = rng.integers(5, 64, size=(P, N))
    return proxy, proxy_ref_s, gold, gold_ref_s, lengths


def test_analyse_curves_shape_and_invariants():
    from rewardlab.experiments.kl_curves import analyse

    proxy, prs, gold, grs, lengths = _synthetic()
    out = analyse(
        proxy, prs, gold, grs, lengths, ["h", "s"], kl_targets=(0.05, 0.5, 1.5), best_of=(1, 4, 16), n_boot=200
    )
    assert set(out["curves"]) == {"raw_sum", "lsc_sum", "raw:h", "lsc:h", "raw:s", "lsc:s"}
    for pts in out["curves"].values():
        tilted_pts = [p for p in pts if p["n"] is None]
        # every utility is evaluated at the same mean KLs
        assert [round(p["kl"], 3) for p in tilted_pts] == [0.05, 0.5, 1.5]
        for p in pts:
            lo, mean, hi = p["gold_good_on_all"]
            assert lo <= mean <= hi and 0 <= mean <= 1
            assert 0 <= p["gold_win_rate"]["h"][1] <= 1
        # best-of-1 is the base policy: win rate 1/2 against a base sample, nothing over-optimised
        b1 = next(p for p in pts if p["n"] == 1)
        assert b1["gold_win_rate"]["h"][1] == pytest.approx(0.5)
        assert b1["overoptimisation"]["s"][1] == pytest.approx(0.0, abs=1e-12)
    # the selection improves the judged reward along KL for a proxy that tracks the judge
    raw_h = [p["gold_win_rate"]["h"][1] for p in out["curves"]["raw:h"] if p["n"] is None]
    assert raw_h[0] < raw_h[-1]
    # one model alone: best-of-n picks by a per-prompt monotone transform are the same picks
    for p in out["paired"]["lsc:h - raw:h"]:
        if p["n"] is not None:
            assert p["gold_win_rate"]["h"] == [0.0, 0.0, 0.0]
    assert 0.5 < out["pool_pair_agreement"]["h"] < 1.0


def test_transform_room_is_zero_for_a_flat_pool_and_grows_with_the_spread():
    from rewardlab.experiments.kl_curves import transform_room

    flat = transform_room(np.zeros((3, 8)), np.zeros(3))
    assert flat == {"within_prompt_std": 0.0, "slope_range": 0.0}
    wide = transform_room(np.tile(np.linspace(-4, 4, 8), (3, 1)), np.zeros(3))
    assert wide["within_prompt_std"] > 2 and 0.9 < wide["slope_range"] < 1.0
