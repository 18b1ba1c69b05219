import math

import numpy as np
import pytest

from rewardserve import lsc


def test_lsc_is_log_sigmoid_of_the_margin():
    for r, ref in [(0.0, 0.0), (2.0, 1.0), (-3.0, 0.5), (10.0, -10.0)]:
        expected = math.log(1.0 / (1.0 + math.exp(-(r - ref))))
        assert lsc.transform(r, ref) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lsc.transform(0.0, 0.0) == pytest.approx(-math.log(2.0))


@pytest.mark.parametrize("d", [1e4, -1e4, 1e300, -1e300, 745.0, -745.0])
def test_lsc_is_finite_and_at_most_zero_at_extremes(d):
    u = float(lsc.transform(d, 0.0))
    assert math.isfinite(u)
    assert u <= 0.0


def test_lsc_asymptotes():
    # far above the reference: u -> 0 from below; far below: u ~ r - r_ref (linear penalty)
    assert lsc.transform(1e4, 0.0) == 0.0
    assert float(lsc.transform(50.0, 0.0)) == pytest.approx(-math.exp(-50.0), rel=1e-9)
    assert float(lsc.transform(-1e4, 0.0)) == pytest.approx(-1e4)
    assert float(lsc.transform(0.0, 1e4)) == pytest.approx(-1e4)


def test_lsc_vectorised_and_float64():
    u = lsc.transform(np.array([0.0, 1.0, -1.0], dtype=np.float32), np.array([0.0, 0.0, 0.0]))
    assert u.dtype == np.float64
    assert u.shape == (3,)
    assert np.all(np.diff(lsc.transform(np.linspace(-5, 5, 11), 0.0)) > 0)  # monotone


def test_identity_transform_ignores_reference():
    assert lsc.transform(3.5, 100.0, "identity") == 3.5
    with pytest.raises(ValueError):
        lsc.transform(1.0, 0.0, "exp")  # type: ignore[arg-type]  # an invalid kind, on purpose


def test_aggregate_methods_and_weights():
    raw = {"h": 2.0, "s": -1.0}
    u = {"h": -0.1, "s": -1.3}
    assert lsc.aggregate(raw, u, "lsc_sum") == pytest.approx(-1.4)
    assert lsc.aggregate(raw, u, "raw_sum") == pytest.approx(1.0)
    assert lsc.aggregate(raw, u, "min") == pytest.approx(-1.3)
    w = {"h": 2.0}  # s defaults to 1
    assert lsc.aggregate(raw, u, "lsc_sum", w) == pytest.approx(-1.5)
    assert lsc.aggregate(raw, u, "raw_sum", w) == pytest.approx(3.0)
    assert lsc.aggregate(raw, u, "min", {"h": 20.0}) == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        lsc.aggregate(raw, u, "mean")  # type: ignore[arg-type]  # an invalid method, on purpose


def test_lsc_sum_is_an_and_raw_sum_lets_one_property_buy_another():
    # y1: good on both (margins +1, +1); y2: superb on one, bad on the other (+6, -3)
    y1 = {"h": 1.0, "s": 1.0}
    y2 = {"h": 6.0, "s": -3.0}
    t = lambda r: {k: float(lsc.transform(v, 0.0)) for k, v in r.items()}  # noqa: E731
    assert lsc.aggregate(y2, t(y2), "raw_sum") > lsc.aggregate(y1, t(y1), "raw_sum")
    assert lsc.aggregate(y1, t(y1), "lsc_sum") > lsc.aggregate(y2, t(y2), "lsc_sum")


def test_p_all_good_is_product_of_sigmoids():
    margins = {"h": 0.7, "s": -0.2}
    u = {k: float(lsc.transform(v, 0.0)) for k, v in margins.items()}
    p = lsc.p_all_good(lsc.aggregate(margins, u, "lsc_sum"))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert p == pytest.approx(sig(0.7) * sig(-0.2), rel=1e-12)
    assert lsc.p_all_good_defined("lsc_sum", None, ["lsc", "lsc"])
    assert lsc.p_all_good_defined("lsc_sum", {"h": 1.0}, ["lsc"])
    assert not lsc.p_all_good_defined("lsc_sum", {"h": 2.0}, ["lsc"])
    assert not lsc.p_all_good_defined("raw_sum", None, ["lsc"])
    assert not lsc.p_all_good_defined("lsc_sum", None, ["lsc", "identity"])


def test_quantile_linear_interpolation():
    v = [3.0, 1.0, 2.0, 4.0]  # sorted 1,2,3,4 ; h = 3q
    assert lsc.quantile(v, 0.0) == 1.0
    assert lsc.quantile(v, 1.0) == 4.0
    assert lsc.quantile(v, 0.5) == pytest.approx(2.5)
    assert lsc.quantile(v, 0.85) == pytest.approx(3.55)  # h = 2.55: 3 + 0.55 * (4 - 3)
    assert lsc.quantile([7.0], 0.85) == 7.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=rng.integers(1, 30))
        q = float(rng.uniform())
        assert lsc.quantile(x.tolist(), q) == pytest.approx(float(np.quantile(x, q)), rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError):
        lsc.quantile([], 0.5)
    with pytest.raises(ValueError):
        lsc.quantile([1.0], 1.5)
