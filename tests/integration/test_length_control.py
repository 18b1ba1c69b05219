"""A head's length correction: served as reward − length_coef × response characters, switchable
per model, and fitted on validation replies (tiny real encoder through from_pretrained)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from safetensors import safe_open

from rewardlab.training.length_control import fit_length_control
from rewardserve.app import create_app
from rewardserve.backends import build_backend
from rewardserve.backends.encoder_head import load_head, save_head
from rewardserve.config import Settings

from ..conftest import LiveServer
from .test_finetune import _length_signal_file

ITEMS = [
    ("hi", "ok"),
    ("how do i boil an egg ?", "boil the egg in water for 9 minutes . " * 3),
    ("why", "because " * 200),
]


def _backend(tiny, models: dict):
    bb = {"kind": "encoder_head", "path": str(tiny["encoder"]), "max_length": 64, "models": models}
    settings = Settings(backbones={"bb": bb})
    return build_backend("bb", settings.backbones["bb"], settings)


def _rewards(be, model: str) -> np.ndarray:
    return be.forward([be.encode(p, r) for p, r in ITEMS])[:, be.model_names.index(model)]


@pytest.fixture
def corrected_head(tiny, tmp_path):
    head, meta = load_head(tiny["head_b"])
    path = tmp_path / "b.safetensors"
    save_head(head, path, {**meta, "length_coef": "0.01"})
    return path


def test_served_reward_subtracts_the_coefficient_times_the_whole_responses_characters(tiny, corrected_head):
    on = _backend(tiny, {"b": {"head": str(corrected_head)}, "plain": {"head": str(tiny["head_b"])}})
    off = _backend(tiny, {"b": {"head": str(corrected_head), "length_correction": False}})
    chars = np.array([len(r) for _, r in ITEMS], dtype=float)
    assert chars[-1] > 64 * 4  # the last response is truncated to fit; its full length still counts
    np.testing.assert_allclose(_rewards(on, "b"), _rewards(off, "b") - 0.01 * chars, atol=1e-5)
    np.testing.assert_allclose(_rewards(on, "plain"), _rewards(off, "b"), atol=1e-5)  # same weights, no coef
    info_on, info_off = on.model_info()["b"], off.model_info()["b"]
    assert info_off.revision == info_on.revision + "-uncorrected"
    assert info_on.extra["length_coef_per_char"] == 0.01 and info_off.extra["length_coef_per_char"] == 0.0


def test_switching_off_a_head_without_a_correction_changes_nothing(tiny):
    on = _backend(tiny, {"a": {"head": str(tiny["head_a"])}})
    off = _backend(tiny, {"a": {"head": str(tiny["head_a"]), "length_correction": False}})
    np.testing.assert_array_equal(_rewards(on, "a"), _rewards(off, "a"))
    assert on.model_info()["a"].revision == off.model_info()["a"].revision


def test_fit_writes_the_coefficient_that_decorrelates_the_served_validation_rewards(tiny, tmp_path):
    data = _length_signal_file(tmp_path / "pairs.jsonl.gz", 200, 3)
    head, meta = load_head(tiny["head_b"])
    path = tmp_path / "h.safetensors"
    save_head(head, path, meta)
    path.with_suffix(".json").write_text(json.dumps({"name": "h"}))
    record = fit_length_control(str(path), str(data), val_fraction=0.3, backbone=str(tiny["encoder"]), log=lambda m: 0)
    with safe_open(str(path), framework="pt") as f:
        assert float(f.metadata()["length_coef"]) == record["coef_per_char"] != 0.0
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["name"] == "h" and card["length_control"]["fitted_on"]["sha256"]
    assert abs(record["validation_corrected"]["reward_length_correlation"]) < 1e-6
    assert record["fitted_on"]["pairs"] > 20


def test_over_http_the_served_raw_reward_is_length_corrected_and_v1_models_says_by_how_much(
    tiny, corrected_head, tmp_path
):
    bb = {"kind": "encoder_head", "path": str(tiny["encoder"]), "max_length": 64}
    models = {"b": {"head": str(corrected_head)}, "b_raw": {"head": str(corrected_head), "length_correction": False}}
    settings = Settings(
        references={"store": f"sqlite:///{tmp_path / 'refs.db'}"},
        backbones={"on": {**bb, "models": {"b": models["b"]}}, "off": {**bb, "models": {"b_raw": models["b_raw"]}}},
    )
    items = [{"prompt": p, "response": r} for p, r in ITEMS]
    with LiveServer(create_app(settings)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        out = c.post("/v1/score", json={"items": items}).raise_for_status().json()["results"]
        listed = {m["name"]: m for m in c.get("/v1/models").raise_for_status().json()["models"]}
    on = np.array([r["raw"]["b"] for r in out])
    off = np.array([r["raw"]["b_raw"] for r in out])
    np.testing.assert_allclose(on, off - 0.01 * np.array([len(r) for _, r in ITEMS]), atol=1e-5)
    assert listed["b"]["length_coef_per_char"] == 0.01 and listed["b_raw"]["length_coef_per_char"] == 0.0
    assert listed["b_raw"]["revision"].endswith("-uncorrected")
