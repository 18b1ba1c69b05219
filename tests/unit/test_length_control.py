"""The length correction's slope: what it subtracts leaves reward and length uncorrelated."""

from __future__ import annotations

import numpy as np
import pytest

from rewardlab.training.length_control import length_slope


def test_the_corrected_reward_is_uncorrelated_with_length():
    rng = np.random.default_rng(0)
    chars = rng.integers(20, 2000, 500).astype(float)
    rewards = 0.001 * chars + rng.normal(0, 0.5, 500)  # a judge that likes length, plus content
    beta = length_slope(rewards, chars)
    assert np.corrcoef(rewards, chars)[0, 1] > 0.5
    assert abs(np.corrcoef(rewards - beta * chars, chars)[0, 1]) < 1e-9
    assert beta == pytest.approx(np.polyfit(chars, rewards, 1)[0])


def test_an_exactly_linear_reward_has_its_own_slope_and_a_flat_one_zero():
    chars = np.array([10.0, 20.0, 40.0, 80.0])
    assert length_slope(3.0 - 0.25 * chars, chars) == pytest.approx(-0.25)
    assert length_slope(np.full(4, 1.7), chars) == pytest.approx(0.0)


def test_replies_of_one_length_have_no_slope():
    with pytest.raises(ValueError, match="same length"):
        length_slope(np.array([1.0, 2.0]), np.array([5.0, 5.0]))
