import numpy as np
import pytest

from rewardlab.experiments.agreement import agreement_table, pair_agreement


def test_pair_agreement_counts_pairs_ordered_the_same_way():
    r = pair_agreement([1.0, -2.0, 0.5, 0.0], [3.0, 1.0, 0.1, 1.0], n_boot=200)
    assert r["mean"] == 0.5 and r["n"] == 4  # agree on pairs 0 and 2; a zero margin never agrees
    assert 0.0 <= r["lo"] <= r["mean"] <= r["hi"] <= 1.0
    with pytest.raises(ValueError, match="different pairs"):
        pair_agreement([1.0], [1.0, 2.0])


def test_agreement_table_reads_eval_rm_score_files(tmp_path):
    rng = np.random.default_rng(0)
    gold_c, gold_r = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    for role, (c, r) in {"gold": (gold_c, gold_r), "proxy": (gold_r, gold_c)}.items():  # the proxy is reversed
        np.savez(tmp_path / f"{role}-m.npz", chosen=c, rejected=r, len_chosen=np.ones(200), len_rejected=np.ones(200))
    t = agreement_table(tmp_path, ["m"], n_boot=200)["proxy"]["m"]
    assert t["pairs"] == 200 and t["agreement"]["mean"] == 0.0
    assert t["gold_accuracy"]["mean"] == pytest.approx(1 - t["proxy_accuracy"]["mean"])
    assert t["gold_accuracy"]["mean"] > 0.7
