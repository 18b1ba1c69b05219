"""`rewardserve train-head` and `eval-rm` on small slices of the shared data, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from safetensors import safe_open

from rewardlab.datasets import file_sha256, load_pairs
from rewardserve.backends.encoder_head import load_head

from ..conftest import SHARED_DATA

HH_TRAIN = SHARED_DATA / "hh-harmless.train.jsonl.gz"
HH_TEST = SHARED_DATA / "hh-harmless.test.jsonl.gz"


def cli(*args, cache):
    env = {"HOME": str(cache)}  # features cache under a temp HOME
    import os

    return subprocess.run(
        [sys.executable, "-m", "rewardserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    cache = tmp_path_factory.mktemp("home")
    args = [
        "train-head",
        "--data",
        str(HH_TRAIN),
        "--out",
        str(out),
        "--name",
        "harm",
        "--backbone",
        str(tiny["encoder"]),
        "--limit",
        "60",
        "--max-epochs",
        "5",
        "--weight-decay",
        "0.01",
        "0.1",
        "--max-length",
        "64",
    ]
    r = cli(*args, cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, cache, args, r


def test_train_head_writes_head_and_card(trained, tiny):
    out, _, _, r = trained
    summary = json.loads(r.stdout)
    card = json.loads((out / "harm.json").read_text())
    assert summary["name"] == "harm" == card["name"]
    assert card["data"]["sha256"] == file_sha256(HH_TRAIN)
    assert card["data"]["pairs"] == 60 and card["data"]["train_pairs"] + card["data"]["validation_pairs"] == 60
    assert 0 <= card["train_accuracy"] <= 1 and 0 <= card["validation_accuracy"] <= 1
    assert card["hyperparameters"]["weight_decay"] in (0.01, 0.1) and len(card["selection"]) == 2
    assert card["backbone"]["revision"] and card["date"]
    head, meta = load_head(out / "harm.safetensors")
    assert head.in_features == 96 and meta["arch"] == "mlp"
    with safe_open(str(out / "harm.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "rewardserve-head/1"


def test_train_head_is_deterministic_and_uses_the_feature_cache(trained, tmp_path):
    out, cache, args, _ = trained
    again = [*args]
    again[again.index("--out") + 1] = str(tmp_path)
    r = cli(*again, cache=cache)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "encoding" not in r.stderr  # cached features: no encoder pass
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "harm.safetensors")), load_file(str(out / "harm.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # same seed, same weights
    ca, cb = (json.loads((d / "harm.json").read_text()) for d in (tmp_path, out))
    assert (ca["train_accuracy"], ca["validation_accuracy"], ca["selection"]) == (
        cb["train_accuracy"],
        cb["validation_accuracy"],
        cb["selection"],
    )


@pytest.mark.slow
def test_eval_rm_through_the_scoring_path(trained, tiny, tmp_path):
    out, cache, _, _ = trained
    cfg = {
        "references": {"store": f"sqlite:///{tmp_path / 'r.db'}"},
        "backbones": {
            "enc": {
                "kind": "encoder_head",
                "path": str(tiny["encoder"]),
                "max_length": 64,
                "models": {"harm": {"head": str(out / "harm.safetensors")}},
            }
        },
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    r = cli(
        "eval-rm",
        "--config",
        str(config),
        "--model",
        "harm",
        "--data",
        str(HH_TEST),
        "--limit",
        "40",
        "--update-card",
        "test",
        "--out",
        str(tmp_path / "eval.json"),
        cache=cache,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "eval.json").read_text())
    pairs = load_pairs(HH_TEST, 40)
    assert res["pairs"] == 40 and 0 <= res["accuracy"] <= 1
    assert res["length_balanced_pairs"] == sum(len(p.chosen) <= len(p.rejected) for p in pairs)
    assert res["length_baseline_accuracy"] == pytest.approx(sum(len(p.chosen) > len(p.rejected) for p in pairs) / 40)
    assert -1 <= res["reward_length_correlation"] <= 1
    assert json.loads((out / "harm.json").read_text())["evaluation"]["test"]["accuracy"] == res["accuracy"]
    # the same accuracy from the live API
    from rewardserve.app import create_app
    from rewardserve.config import load_settings

    from ..conftest import LiveServer

    with LiveServer(create_app(load_settings(config))) as srv:
        import httpx

        items = [{"prompt": p.prompt, "response": x} for p in pairs for x in (p.chosen, p.rejected)]
        raw = [
            x["raw"]["harm"]
            for x in httpx.post(f"{srv.url}/v1/score", json={"items": items}, timeout=60).json()["results"]
        ]
    acc = sum(raw[2 * i] > raw[2 * i + 1] for i in range(40)) / 40
    assert acc == pytest.approx(res["accuracy"])


def test_bad_data_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c"}\n')
    r = cli("train-head", "--data", str(bad), "--out", str(tmp_path / "o"), cache=tmp_path)
    assert r.returncode == 2 and "needs the keys" in r.stderr
