"""Checks beside reward models in one request, through the registry: a real ``kind: verifier``
backbone (its checks in worker processes) next to a fake reward model (``fakes.py``). The transforms
per kind, every aggregate over the mix, p_all_good, a missing label (422 before any forward, or
``missing_label: skip``), and labels kept out of every warning."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from rewardserve.config import ConfigError, Settings, load_settings
from rewardserve.errors import MissingLabel
from rewardserve.health import ForwardHealth
from rewardserve.metrics import Metrics
from rewardserve.references.sqlite import SQLiteStore
from rewardserve.registry import BackboneRegistry
from rewardserve.registry.verifier import VerifierBackbone
from rewardserve.scoring import Item, Scorer, ScoreRequest
from rewardserve.verifiers import VerifierBackboneConfig

from .fakes import FakeBackend, fake_factory, fake_raw

EPS = {"exact": 1e-3, "fmt": 0.01, "opt": 0.05, "boom": 1e-3}


def settings(tmp_path: Path) -> Settings:
    return Settings(
        references={"store": f"sqlite:///{tmp_path / 'refs.db'}"},
        backbones={
            "fake": {"kind": "encoder_head", "models": {"a": {"head": "unused"}}},
            "checks": {
                "kind": "verifier",
                "workers": 1,
                "timeout_s": 3,
                "models": {
                    "exact": {"verifier": "exact_match", "epsilon": EPS["exact"]},
                    "fmt": {"verifier": "regex", "pattern": "^ok", "epsilon": EPS["fmt"]},
                    "opt": {"verifier": "exact_match", "missing_label": "skip", "epsilon": EPS["opt"]},
                    "boom": {"verifier": "tests.verifier_functions:raises_with_label", "epsilon": EPS["boom"]},
                },
            },
        },
    )


def run(tmp_path: Path, body: Any) -> Any:
    async def go() -> Any:
        s = settings(tmp_path)
        registry = BackboneRegistry(s, Metrics(), ForwardHealth(), backend_factory=fake_factory)
        await registry.load()
        store = SQLiteStore(tmp_path / "refs.db")
        try:
            return await body(Scorer(s, registry, store, registry.context.metrics), registry)
        finally:
            await registry.stop(0)
            await store.close()

    return asyncio.run(go())


def check_u(score: float, eps: float) -> float:
    return math.log(eps + (1 - eps) * score)


def test_config_sections_by_kind():
    s = Settings(
        backbones={
            "c": {"kind": "verifier", "models": {"m": {"verifier": "math"}}},
            "j": {"kind": "judge", "path": "some/lm", "models": {"q": {"question": "Polite?"}}},
        }
    )
    assert isinstance(s.backbones["c"], VerifierBackboneConfig)
    assert type(s.backbones["j"]).__name__ == "JudgeBackboneConfig"
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        Settings(backbones={"c": {"kind": "verifier", "models": {"m": {"verifier": "nope"}}}})
    with pytest.raises(ValueError, match="question"):
        Settings(backbones={"j": {"kind": "judge", "path": "x", "models": {"q": {}}}})
    with pytest.raises(ValueError, match="used by backbones"):
        Settings(
            backbones={
                "c": {"kind": "verifier", "models": {"a": {"verifier": "json"}}},
                "m": {"kind": "encoder_head", "models": {"a": {"head": "h"}}},
            }
        )


def test_example_config_loads_and_its_repository_copy_matches():
    from rewardlab.demo_reasoning import example_config_path

    shipped = example_config_path()
    repo = Path(__file__).resolve().parents[2] / "examples" / "reasoning.yaml"
    s = load_settings(shipped)
    assert set(s.model_names()) == {"correct", "formatted", "helpful", "harmless"}
    for m in ("helpful", "harmless"):  # the packaged heads, from either copy
        head = s.backbones["minilm"].models[m].head
        assert head is not None and Path(s.resolve_path(head)).is_file()
        head_r = load_settings(repo).backbones["minilm"].models[m].head
        assert Path(load_settings(repo).resolve_path(head_r)).resolve() == Path(s.resolve_path(head)).resolve()
    same = repo.read_text().replace("../service/rewardserve/data/heads/", "../heads/")
    assert same == shipped.read_text()


def test_bad_verifier_section_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbones:\n  c:\n    kind: verifier\n    models:\n      r: {verifier: regex}\n")
    with pytest.raises(ConfigError, match=r"backbones\.c.*regex verifier needs 'pattern'"):
        load_settings(cfg)


def test_mixed_kinds_transforms_aggregates_and_p_all_good(tmp_path):
    rows = [  # (response, label): exact right + format ok; exact wrong + format bad
        ("ok 42", "ok 42"),
        ("no: 41", "ok 42"),
    ]
    its = [Item(f"p{i}", r, id=str(i), reference={"a": 0.5}, label=lb) for i, (r, lb) in enumerate(rows)]
    models = ["a", "exact", "fmt", "opt"]

    async def body(scorer, registry):
        out = {}
        for method, weights in (("lsc_sum", None), ("raw_sum", None), ("min", None), ("lsc_sum", {"exact": 2.0})):
            out[(method, bool(weights))] = await scorer.score(ScoreRequest(its, models, method, weights))
        no_ref = await scorer.score(ScoreRequest([Item("p", "ok 42", label="ok 42")], models))
        return out, no_ref, registry.describe_models()

    out, no_ref, described = run(tmp_path, body)
    lsc = out[("lsc_sum", False)].items
    for r, (resp, _) in zip(lsc, rows):
        good = 1.0 if r.id == "0" else 0.0
        assert r.raw == {"a": fake_raw(resp, 0), "exact": good, "fmt": good, "opt": good}
        assert r.reference_source == {
            "a": "inline",
            "exact": "not_applicable",
            "fmt": "not_applicable",
            "opt": "not_applicable",
        }
        for m in ("exact", "fmt", "opt"):
            assert r.transformed[m] == pytest.approx(check_u(good, EPS[m]), abs=1e-12)
        assert r.transformed["a"] == pytest.approx(-math.log1p(math.exp(-(fake_raw(resp, 0) - 0.5))), abs=1e-12)
        assert r.aggregate == pytest.approx(sum(r.transformed[m] for m in models), abs=1e-12)
        assert r.p_all_good == pytest.approx(math.exp(r.aggregate))  # every model a real probability
        assert r.warnings == []
    # the failed checks cost log ε each: the wrong, badly formatted answer's AND is below log(0.001·0.01·0.05)
    assert lsc[1].aggregate < math.log(EPS["exact"] * EPS["fmt"] * EPS["opt"])
    raw_sum = out[("raw_sum", False)].items
    assert raw_sum[1].aggregate == pytest.approx(fake_raw("no: 41", 0))  # the checks add 0 each
    assert raw_sum[0].aggregate == pytest.approx(fake_raw("ok 42", 0) + 3)
    assert out[("min", False)].items[1].aggregate == pytest.approx(min(lsc[1].transformed.values()))
    weighted = out[("lsc_sum", True)].items[0]
    assert weighted.aggregate == pytest.approx(lsc[0].aggregate + lsc[0].transformed["exact"])
    assert all(r.p_all_good is None for k, o in out.items() if k != ("lsc_sum", False) for r in o.items)
    # a reward model on its config default reference is no real probability: no p_all_good
    assert no_ref.items[0].reference_source["a"] == "config_default" and no_ref.items[0].p_all_good is None
    by_name = {d["name"]: d for d in described}
    assert by_name["exact"]["kind"] == "verifier" and by_name["exact"]["needs"] == ["label"]
    assert by_name["fmt"]["needs"] == [] and by_name["fmt"]["epsilon"] == EPS["fmt"]
    assert by_name["exact"]["transform"] == "check" and by_name["a"]["needs"] == []


def test_missing_label_is_an_error_before_any_forward(tmp_path):
    async def body(scorer, registry):
        its = [Item("p", "ok", label="ok"), Item("p", "ok")]
        backend = registry.backbones["fake"].backend
        before = list(backend.forwards)  # the warmup's
        with pytest.raises(MissingLabel, match=r"items\[1\].*model 'exact'.*missing_label: skip"):
            await scorer.score(ScoreRequest(its, ["a", "exact"]))
        return backend, before

    backend, before = run(tmp_path, body)
    assert isinstance(backend, FakeBackend) and backend.forwards == before


def test_missing_label_skip_leaves_the_model_out_of_that_item(tmp_path):
    async def body(scorer, registry):
        its = [Item("p", "ok", reference={"a": 0.0}, label="ok"), Item("p", "ok", reference={"a": 0.0})]
        return await scorer.score(ScoreRequest(its, ["a", "fmt", "opt"]))

    with_label, without = run(tmp_path, body).items
    assert with_label.raw["opt"] == 1.0 and with_label.p_all_good is not None
    assert without.raw["opt"] is None and without.transformed["opt"] is None
    assert set(without.raw) == {"a", "fmt", "opt"}  # every requested model present
    assert without.aggregate == pytest.approx(without.transformed["a"] + without.transformed["fmt"])
    assert without.p_all_good is None
    assert any("'opt'" in w and "left out" in w for w in without.warnings)


def test_a_failing_check_is_a_warning_without_the_label(tmp_path):
    secret = "the-secret-answer-17"

    async def body(scorer, registry):
        return await scorer.score(ScoreRequest([Item("p", "x", label=secret)], ["boom", "fmt"]))

    (r,) = run(tmp_path, body).items
    assert r.raw == {"boom": 0.0, "fmt": 0.0}
    assert any("'boom'" in w and "failed" in w for w in r.warnings)
    assert not any(secret in w for w in r.warnings)


def test_verifier_backbone_refuses_a_foreign_section(tmp_path):
    from rewardserve.registry import verifier

    s = settings(tmp_path)
    with pytest.raises(TypeError, match="verifier section"):
        verifier.build("fake", s.backbones["fake"], BackboneRegistry(s, Metrics()).context)
    ctx = BackboneRegistry(s, Metrics()).context
    assert isinstance(verifier.build("checks", s.backbones["checks"], ctx), VerifierBackbone)
