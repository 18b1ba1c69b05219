"""``rewardserve experiment kl-curves`` end to end on tiny models: pool, proxies over HTTP, gold in process."""

from __future__ import annotations

import json

import pytest
import yaml

from rewardlab import tiny_models
from rewardlab.experiments.kl_curves import KLCurvesConfig, pool_path, read_pool, run_kl_curves
from rewardserve.cli import main

from ..conftest import SHARED_DATA, tiny_settings


def _config_file(settings, path):
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)))
    return str(path)


@pytest.mark.slow
def test_kl_curves_end_to_end(tiny, tmp_path):
    policy = str(tiny_models.make_causal_lm(tmp_path / "lm", seed=11))
    settings = tiny_settings(tiny, tmp_path)
    config = _config_file(settings, tmp_path / "models.yaml")
    cfg = KLCurvesConfig(
        prompts=str(SHARED_DATA / "prompts.jsonl.gz"),
        n_prompts=6,
        n=6,
        reference_samples=4,
        max_new_tokens=6,
        batch_prompts=2,
        policy=policy,
        cache_dir=str(tmp_path / "cache"),
        proxy_config=config,
        proxy_models=["a", "cls"],
        gold_config=config,
        gold_models=["cls", "a"],
        kl_targets=[0.05, 0.3, 1.0],
        best_of=[1, 2, 4, 8],
        bootstrap=100,
        out_dir=str(tmp_path / "out"),
    )
    # a time limit of 0 stops after the first batch: the pool is resumable
    partial = run_kl_curves(cfg, max_generation_seconds=0.0)
    assert not partial["complete"] and partial["prompts_done"] == 2
    result = run_kl_curves(cfg)
    assert result["complete"]
    out = json.loads((tmp_path / "out" / "kl_curves.json").read_text())
    assert out["n_prompts"] == 6 and out["n_samples"] == 6
    assert set(out["curves"]) == {"raw_sum", "lsc_sum", "raw:a", "lsc:a", "raw:cls", "lsc:cls"}
    assert out["proxy"]["a"] != out["gold"]["a"]  # proxy a is judged by another model
    for p in out["curves"]["lsc_sum"]:
        assert set(p) >= {
            "beta",
            "n",
            "kl",
            "gold_good_on_all",
            "gold_win_rate",
            "overoptimisation",
            "worst_decile_gold_gain",
            "mean_length",
        }
    assert (tmp_path / "out" / "kl_curves.png").stat().st_size > 0
    # scores are cached next to the pool: a rerun regenerates and rescores nothing, same numbers
    rows = read_pool(pool_path(cfg))
    assert len(rows) == 6 and all(len(r["candidates"]) == 6 and len(r["reference_samples"]) == 4 for r in rows.values())
    cached = sorted(p.name for p in pool_path(cfg).parent.glob("*.json"))
    assert sum(".proxy." in n for n in cached) == 2 and sum(".gold." in n for n in cached) == 2
    assert (
        main(
            [
                "experiment",
                "kl-curves",
                "--prompts",
                cfg.prompts,
                "--n-prompts",
                "6",
                "--n",
                "6",
                "--reference-samples",
                "4",
                "--max-new-tokens",
                "6",
                "--batch-prompts",
                "2",
                "--policy",
                policy,
                "--cache-dir",
                cfg.cache_dir,
                "--proxy-config",
                config,
                "--proxy-models",
                "a",
                "cls",
                "--gold-config",
                config,
                "--gold-models",
                "cls",
                "a",
                "--kl-targets",
                "0.05",
                "0.3",
                "1.0",
                "--best-of",
                "1",
                "2",
                "4",
                "8",
                "--bootstrap",
                "100",
                "--out-dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "out" / "kl_curves.json").read_text())
    assert again["curves"] == out["curves"]
