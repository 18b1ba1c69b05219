"""The scoring pipeline with fakes injected at the registry (``fakes.py``): results in request order,
the transforms and aggregates, p_all_good, the reference chain end to end, a plug-in check kind that
reads labels, limits, and readiness. Milliseconds each: no network, no model."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rewardclient.protocol import prompt_fingerprint
from rewardserve import lsc
from rewardserve.config import Settings
from rewardserve.errors import (
    InvalidInput,
    LoadFailed,
    MissingReference,
    ModelFailed,
    NotReady,
    TextTooLong,
    TooManyItems,
    UnknownModel,
)
from rewardserve.health import ForwardHealth
from rewardserve.kinds import KINDS
from rewardserve.metrics import Metrics
from rewardserve.references.base import SET_DEFAULT_FINGERPRINT, Reference
from rewardserve.references.sqlite import SQLiteStore
from rewardserve.registry import BackboneRegistry
from rewardserve.scoring import Item, Scorer, ScoreRequest

from .fakes import FAKE_KIND_MODULE, FakeBackend, fake_factory, fake_raw

CHECK = {"kind": "fake_check", "models": {"exact": {}}}


def make_settings(tmp_path: Path, check: bool = False, **overrides: Any) -> Settings:
    """Backbone 'fake' serves 'a' (lsc), 'b' (lsc, missing_reference: error) and 'i' (identity)."""
    backbones: dict[str, Any] = {
        "fake": {
            "kind": "encoder_head",
            "models": {
                "a": {"head": "unused"},
                "b": {"head": "unused", "missing_reference": "error"},
                "i": {"head": "unused", "transform": "identity", "default_reference": 7.0},
            },
        }
    }
    if check:
        backbones["checks"] = CHECK
    return Settings(
        references={"store": f"sqlite:///{tmp_path / 'refs.db'}"},
        batching={"max_wait_ms": 0},
        backbones=backbones,
        **overrides,
    )


@pytest.fixture
def check_kind(monkeypatch):
    """The plug-in point: one module (tests/unit/fakes.py) and its line in KINDS."""
    monkeypatch.setitem(KINDS, "fake_check", FAKE_KIND_MODULE)


def run(
    tmp_path: Path, body: Callable[[Scorer, SQLiteStore], Awaitable[Any]], check: bool = False, **overrides: Any
) -> Any:
    async def go() -> Any:
        settings = make_settings(tmp_path, check, **overrides)
        registry = BackboneRegistry(settings, Metrics(), ForwardHealth(), backend_factory=fake_factory)
        await registry.load()
        store = SQLiteStore(tmp_path / "refs.db")
        try:
            return await body(Scorer(settings, registry, store, registry.context.metrics), store)
        finally:
            await registry.stop(0)
            await store.close()

    return asyncio.run(go())


def items(*responses: str, **kw: Any) -> list[Item]:
    return [Item(f"prompt {i}", r, id=f"id{i}", **kw) for i, r in enumerate(responses)]


def test_results_in_request_order_with_raw_transformed_and_aggregate(tmp_path):
    responses = ["x" * n for n in (30, 5, 12, 1, 40)]

    async def body(scorer, store):
        return await scorer.score(ScoreRequest(items(*responses, reference={"a": 1.0, "b": -1.0}), ["a", "b"]))

    out = run(tmp_path, body)
    assert [r.id for r in out.items] == [f"id{i}" for i in range(5)]
    for r, resp in zip(out.items, responses):
        assert r.raw == {"a": fake_raw(resp, 0), "b": fake_raw(resp, 1)}
        assert r.reference == {"a": 1.0, "b": -1.0} and r.reference_source == {"a": "inline", "b": "inline"}
        for m in ("a", "b"):
            assert r.transformed[m] == pytest.approx(-math.log1p(math.exp(-(r.raw[m] - r.reference[m]))), abs=1e-12)
        assert r.aggregate == pytest.approx(r.transformed["a"] + r.transformed["b"], abs=1e-12)
        assert r.p_all_good == pytest.approx(math.exp(r.aggregate))
        assert r.truncated == {"a": False, "b": False} and r.warnings == []
    assert out.revisions == {"a": "rev-1", "b": "rev-1"} and out.method == "lsc_sum"
    assert out.tokens == sum(len(r) for r in responses)
    assert set(out.timing) == {"encode", "queue", "forward"} and all(v >= 0 for v in out.timing.values())


def test_aggregate_methods_and_weights(tmp_path):
    async def body(scorer, store):
        req = dict(items=items("abcdef", reference={"a": 0.3}), models=["a", "i"])
        return [
            (await scorer.score(ScoreRequest(**req, method=m, weights=w))).items[0]
            for m, w in (("raw_sum", None), ("min", {"a": 2.0}), ("lsc_sum", {"a": 0.5}))
        ]

    raw_sum, min_, weighted = run(tmp_path, body)
    assert raw_sum.aggregate == pytest.approx(fake_raw("abcdef", 0) + fake_raw("abcdef", 2))
    assert min_.aggregate == pytest.approx(min(2 * min_.transformed["a"], min_.transformed["i"]))
    assert weighted.aggregate == pytest.approx(0.5 * weighted.transformed["a"] + weighted.transformed["i"])
    # identity: u = r, the reference reported but unused; not a probability, so no p_all_good
    assert raw_sum.transformed["i"] == raw_sum.raw["i"] and raw_sum.reference_source["i"] == "config_default"
    assert raw_sum.reference["i"] == 7.0
    assert all(r.p_all_good is None for r in (raw_sum, min_, weighted))


def test_reference_chain_inline_stored_set_default_config_default_error(tmp_path):
    async def body(scorer, store):
        await store.put_many("a", [(prompt_fingerprint("prompt 1"), Reference(0.25, "rev-1"))])
        await store.put_many("a", [(prompt_fingerprint("prompt 2"), Reference(0.5, "rev-0"))])  # stale
        first = await scorer.score(ScoreRequest(items("r0", "r1", "r2", reference={"b": 0.0}), ["a", "b"]))
        await store.put_many("a", [(SET_DEFAULT_FINGERPRINT, Reference(-2.0, "rev-1"))])
        second = await scorer.score(ScoreRequest(items("r0", "r1"), ["a"]))
        with pytest.raises(MissingReference, match=r"items\[0\]: no reference for model 'b'.*the model's"):
            await scorer.score(ScoreRequest(items("r0"), ["b"]))
        with pytest.raises(MissingReference, match="the request's"):
            await scorer.score(ScoreRequest(items("r0"), ["a"], reference_set="empty", missing_reference="error"))
        # identity models never need one, even when the request asks for errors
        third = await scorer.score(ScoreRequest(items("r0"), ["i"], missing_reference="error"))
        return first, second, third

    first, second, third = run(tmp_path, body)
    assert [r.reference_source["a"] for r in first.items] == ["config_default", "stored", "stored"]
    assert [r.reference["a"] for r in first.items] == [0.0, 0.25, 0.5]
    assert [r.p_all_good is not None for r in first.items] == [False, True, True]
    assert first.items[2].warnings == [
        "the stored reference for model 'a' was made with model revision rev-0; the model is now rev-1"
    ]
    assert [(r.reference_source["a"], r.reference["a"]) for r in second.items] == [
        ("set_default", -2.0),
        ("stored", 0.25),
    ]
    assert third.items[0].reference_source == {"i": "config_default"}


def test_fallbacks_are_counted_per_model_and_source(tmp_path):
    async def body(scorer, store):
        await scorer.score(ScoreRequest(items("r0", "r1", "r2"), ["a", "i"]))
        return scorer.metrics.reference_fallbacks

    counter = run(tmp_path, body)
    assert counter.labels("a", "config_default")._value.get() == 3
    assert counter.labels("i", "config_default")._value.get() == 0  # identity ignores its reference


def test_a_plugged_in_check_kind_reads_labels_and_joins_the_and(tmp_path, check_kind):
    async def body(scorer, store):
        reqs = [
            Item("p", "42", reference={"a": 0.0}, label=42),
            Item("p", "41", reference={"a": 0.0}, label=42),
            Item("p", "42", reference={"a": 0.0}),  # no label: the check "times out"
        ]
        out = await scorer.score(ScoreRequest(reqs, ["a", "exact"]))
        return out, scorer.registry.backbones["checks"].seen_labels

    out, labels = run(tmp_path, body, check=True)
    assert labels == [42, 42, None]
    eps = 0.01
    assert [r.transformed["exact"] for r in out.items] == pytest.approx([0.0, math.log(eps), math.log(eps)])
    for r in out.items:
        assert r.reference_source["exact"] == "not_applicable"
        assert r.aggregate == pytest.approx(r.transformed["a"] + r.transformed["exact"])
        assert r.p_all_good == pytest.approx(math.exp(r.aggregate))  # both are log-probabilities
    assert out.items[2].warnings == ["check timed out: scored 0"] and out.items[0].warnings == []


def test_limits_and_unknown_names(tmp_path):
    async def body(scorer, store):
        for req, err in (
            (ScoreRequest(items("r"), ["nope"]), UnknownModel),
            (ScoreRequest(items("r"), ["a"], weights={"b": 1.0}), InvalidInput),
            (ScoreRequest(items("r", reference={"zzz": 1.0}), ["a"]), InvalidInput),
            (ScoreRequest(items(*["r"] * 3), ["a"]), TooManyItems),
            (ScoreRequest(items("r" * 50), ["a"]), TextTooLong),
        ):
            with pytest.raises(err):
                await scorer.score(req)
        return list(scorer.registry.backbones["fake"].backend.forwards)

    forwards = run(tmp_path, body, limits={"max_items_per_request": 2, "max_text_chars": 40})
    assert forwards == [1]  # the warm-up only: nothing invalid reached the backend


def test_a_failed_reference_lookup_leaves_nothing_queued(tmp_path):
    async def body(scorer, store):
        with pytest.raises(MissingReference):
            await scorer.score(ScoreRequest(items(*["r"] * 4), ["b"]))
        await asyncio.sleep(0.05)
        return scorer.registry.backbones["fake"].batcher.queued_items

    assert run(tmp_path, body) == 0


def test_a_failing_forward_is_a_model_error_naming_the_backbone(tmp_path):
    async def body(scorer, store):
        backend = scorer.registry.backbones["fake"].backend
        assert isinstance(backend, FakeBackend)
        backend.fail = True
        with pytest.raises(ModelFailed, match=r"backbone 'fake' \(models a, b, i\).*injected fault"):
            await scorer.score(ScoreRequest(items("r", reference={"a": 0.0}), ["a"]))

    run(tmp_path, body)


def test_readiness_loading_then_load_failed(tmp_path):
    def broken(name, cfg, settings):
        raise FileNotFoundError("no weights in /nowhere")

    async def go():
        registry = BackboneRegistry(make_settings(tmp_path), Metrics(), backend_factory=broken)
        with pytest.raises(NotReady) as loading:
            registry.check_ready()
        assert not isinstance(loading.value, LoadFailed)
        with pytest.raises(FileNotFoundError):
            await registry.load()
        with pytest.raises(LoadFailed, match="loading models failed: FileNotFoundError"):
            registry.check_ready()

    asyncio.run(go())


def test_describe_says_what_each_model_is(tmp_path, check_kind):
    async def body(scorer, store):
        return scorer.registry.describe_models(), scorer.registry.describe_backbones()

    models, backbones = run(tmp_path, body, check=True)
    by = {m["name"]: m for m in models}
    assert by["a"]["transform"] == "lsc" and by["i"]["transform"] == "identity" and by["exact"]["transform"] == "check"
    assert by["a"]["backbone"] == "fake" and by["a"]["revision"] == "rev-1" and by["a"]["device"] == "cpu"
    assert backbones["checks"] == {"checks": 1} and backbones["fake"]["forward_workers"] >= 1


def test_lsc_matches_the_math_module(tmp_path):
    """The pipeline's transform is lsc.transform (one implementation of the math)."""

    async def body(scorer, store):
        return (await scorer.score(ScoreRequest(items("a" * 33, reference={"a": 1.7}), ["a"]))).items[0]

    r = run(tmp_path, body)
    assert r.transformed["a"] == float(lsc.transform(r.raw["a"], 1.7))


def test_a_failing_backbone_takes_the_other_backbones_items_out_of_their_queues(tmp_path):
    async def go():
        settings = Settings(
            references={"store": f"sqlite:///{tmp_path / 'refs.db'}"},
            backbones={
                "bad": {"kind": "encoder_head", "models": {"a": {"head": "unused"}}},
                "slow": {
                    "kind": "encoder_head",
                    "batching": {"max_wait_ms": 500, "max_batch_tokens": 100_000},  # waits for company
                    "models": {"c": {"head": "unused"}},
                },
            },
        )
        registry = BackboneRegistry(settings, Metrics(), backend_factory=fake_factory)
        await registry.load()
        registry.backbones["bad"].backend.fail = True
        slow = registry.backbones["slow"]
        forwards = list(slow.backend.forwards)
        store = SQLiteStore(tmp_path / "refs.db")
        try:
            with pytest.raises(ModelFailed):
                await Scorer(settings, registry, store, Metrics()).score(
                    ScoreRequest(items("r0", "r1", reference={"a": 0.0, "c": 0.0}), ["a", "c"])
                )
            await asyncio.sleep(0.6)  # past max_wait: had they stayed queued, they would have run
            assert slow.batcher.queued_items == 0 and slow.backend.forwards == forwards
        finally:
            await registry.stop(0)
            await store.close()

    asyncio.run(go())
