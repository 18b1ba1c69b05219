"""The benchmark (bench/): workload generator, statistics, batching helper, and one --quick run."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.limit import ideal_batches
from bench.load import overlap, server_timing, usage_tokens
from bench.options import Options
from bench.phases import runnable
from bench.ratios import compute_ratios
from bench.stats import median_interval, percentile, summarize_ms
from bench.workload import VOCABULARY, WORKLOADS, generate, spec

REPO = Path(__file__).resolve().parents[2]


# -- workload --------------------------------------------------------------------------------------
def test_same_seed_same_workload():
    assert generate("mixed", 200, seed=7) == generate("mixed", 200, seed=7)
    assert generate("mixed", 200, seed=7) != generate("mixed", 200, seed=8)
    assert generate("mixed", 50, seed=7) == generate("mixed", 200, seed=7)[:50]  # a prefix is stable too
    assert generate("mixed", 20, seed=0) != generate("uniform", 20, seed=0)


def test_workload_is_identical_across_processes():
    """No salted str hashing or global random state: another interpreter builds the same text."""
    code = "import json, bench.workload as w; print(json.dumps(w.generate('mixed', 64, seed=3)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout
    random.seed(99)  # the generator must not depend on the global random state either
    assert json.loads(out) == generate("mixed", 64, seed=3)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_length_ranges_respected(name):
    ws = spec(name)
    items = generate(ws, 2000, seed=1)
    p_words = [len(it["prompt"].split()) for it in items]
    r_words = [len(it["response"].split()) for it in items]
    assert ws.prompt_words[0] <= min(p_words) and max(p_words) <= ws.prompt_words[1]
    assert ws.response_words[0] <= min(r_words) and max(r_words) <= ws.response_words[1]
    vocab = set(VOCABULARY)
    assert all(w in vocab for it in items[:100] for w in (it["prompt"] + " " + it["response"]).split())


def test_stated_distributions():
    assert spec("mixed").prompt_words == (5, 60) and spec("mixed").response_words == (5, 150)
    assert spec("uniform").prompt_words == (30, 30) and spec("uniform").response_words == (80, 80)
    items = generate("mixed", 3000, seed=2)
    r_words = [len(it["response"].split()) for it in items]
    # uniform over the whole range: both ends are reached and the mean is near the middle
    assert min(r_words) <= 8 and max(r_words) >= 147
    assert abs(sum(r_words) / len(r_words) - 77.5) < 3
    uni = generate("uniform", 100, seed=2)
    assert {len(it["prompt"].split()) for it in uni} == {30} and {len(it["response"].split()) for it in uni} == {80}


def test_unknown_workload():
    with pytest.raises(ValueError, match="unknown workload"):
        generate("nope", 3)


# -- statistics ------------------------------------------------------------------------------------
def test_percentile_known_values():
    xs = [4.0, 1.0, 3.0, 2.0]  # unsorted input
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_percentile_matches_numpy():
    rng = random.Random(0)
    for n in (1, 2, 7, 100, 1001):
        xs = [rng.expovariate(1.0) for _ in range(n)]
        for q in (0, 1, 10, 50, 90, 99, 99.9, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-12)


def test_median_interval_order_statistics():
    # the published table of distribution-free 95 % intervals for the median: n -> (k, n - k + 1)
    for n, (lo, hi) in {6: (1, 6), 9: (2, 8), 12: (3, 10), 20: (6, 15), 30: (10, 21)}.items():
        assert median_interval([float(i) for i in range(n, 0, -1)]) == (lo, hi)
    assert median_interval([1.0] * 5) is None  # 1 - 2/32 < 0.95: no interval from five values
    assert median_interval([3.0, 1.0, 2.0], confidence=0.7) == (1.0, 3.0)


def test_median_interval_covers_the_median():
    rng = np.random.default_rng(0)
    misses = sum(
        not (lo <= 0.0 <= hi) for lo, hi in (median_interval(rng.standard_normal(12).tolist()) for _ in range(4000))
    )
    assert misses / 4000 < 0.05  # exact coverage at n = 12: 1 - 2·P(Bin(12, 1/2) <= 2) = 0.961


def test_summary_is_ordered_and_in_ms():
    rng = random.Random(1)
    s = summarize_ms([rng.uniform(0.001, 0.5) for _ in range(500)])
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert 1 <= s["p50"] <= 500
    assert summarize_ms([])["p50"] is None


# -- helpers of the phases -------------------------------------------------------------------------
def test_ideal_batches_respect_the_budget():
    rng = random.Random(3)
    lengths = [rng.randint(5, 300) for _ in range(500)] + [900]  # one item longer than the budget
    batches = ideal_batches(lengths, 1024)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1024
    # sorted: each batch's items are no longer than the next batch's
    assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in zip(batches, batches[1:]))


def test_server_timing_header_parsed():
    assert server_timing("encode;dur=0.81, queue;dur=0.05, forward;dur=41.30, total;dur=43.02") == {
        "encode": 0.81,
        "queue": 0.05,
        "forward": 41.3,
        "total": 43.02,
    }
    assert server_timing('db;desc="x";dur=2, miss, cpu;dur=bad') == {"db": 2.0}
    assert server_timing(None) == {}


def test_usage_tokens_from_a_response_body():
    body = json.dumps({"results": [{"raw": {"a": 1}}], "usage": {"items": 1, "tokens": 1234}}).encode()
    assert usage_tokens(body) == 1234
    assert usage_tokens(json.dumps({"usage": {"tokens": 7}}, separators=(",", ":")).encode()) == 7
    assert usage_tokens(b'{"error": {}}') is None


def test_overlap_credits_only_the_share_inside_the_window():
    assert overlap(0.0, 4.0, 1.0, 3.0) == pytest.approx(0.5)  # half of its life inside
    assert overlap(0.0, 1.0, 1.0, 3.0) == 0.0  # ended as the window opened
    assert overlap(1.5, 2.5, 1.0, 3.0) == 1.0  # wholly inside
    assert overlap(2.0, 6.0, 1.0, 3.0) == pytest.approx(0.25)  # sent inside, answered after it closed
    assert overlap(2.0, 2.0, 1.0, 3.0) == 1.0 and overlap(5.0, 5.0, 1.0, 3.0) == 0.0


def test_cells_whose_round_outlasts_a_cell_are_skipped_with_the_reason():
    o = Options.make(concurrency=(1, 4, 16, 64), sizes=(1, 8, 64), max_round_seconds=4.0)
    run, skipped = runnable(o, rate=25.0)
    assert all(c * s / 25.0 <= 4.0 for s, c in run) and (1, 64) in run and (8, 4) in run
    assert {(x["concurrency"], x["size"]) for x in skipped} == {(16, 8), (64, 8), (4, 64), (16, 64), (64, 64)}
    assert all(x["round_seconds_at_limit"] > 4.0 for x in skipped)
    assert len(runnable(o, rate=5000.0)[0]) == 12 and runnable(o, rate=None)[1] == []  # a GPU, or no limit phase
    assert runnable(o, rate=None, min_in_flight=32)[0] == [
        (1, 64),
        (8, 4),
        (8, 16),
        (8, 64),
        (64, 1),
        (64, 4),
        (64, 16),
        (64, 64),
    ]


def _cell(c, s, ips, p50=10.0, added=None):
    return {
        "concurrency": c,
        "size": s,
        "items_per_s": ips,
        "latency_ms": {"p50": p50, "p90": p50, "p99": p50},
        "added_ms": {"p50": added},
    }


def test_ratios_and_targets():
    res = {
        "meta": {"workloads": ["mixed"], "concurrency": [1, 4], "sizes": [1, 8], "rss_requests": [200, 2000]},
        "limit": {
            "workloads": {"mixed": {"items_per_s": 100.0, "forward_items_per_s": 110.0, "single_item_ms": {"p50": 8.0}}}
        },
        "service": {"mixed": [_cell(1, 1, 20, p50=11.0, added=2.5), _cell(4, 1, 50), _cell(1, 8, 60), _cell(4, 8, 95)]},
        "naive": {"mixed": [_cell(1, 1, 25), _cell(4, 1, 30), _cell(1, 8, 40), _cell(4, 8, 0.0)]},
        "unsorted": {"mixed": [_cell(4, 8, 50)]},
        "fifo": {"mixed": [_cell(4, 8, 80)]},
        "memory": {"requests": [200, 2000], "ratio": 1.02},
    }
    ratios, targets = compute_ratios(res)
    assert ratios["service_over_limit"]["mixed"]["ratio"] == pytest.approx(0.95)
    assert ratios["service_over_naive"]["mixed"]["1"]["min_over_sizes"] == pytest.approx(0.8)
    assert math.isinf(ratios["service_over_naive"]["mixed"]["4"]["by_size"]["8"])  # naive answered nothing
    assert ratios["sorted_over_unsorted"]["ratio"] == pytest.approx(1.9)
    assert ratios["length_aware_over_fifo"]["ratio"] == pytest.approx(95 / 80)
    assert ratios["added_latency_ms"]["added_p50"] == pytest.approx(2.5)  # paired, from Server-Timing
    assert ratios["added_latency_ms"]["service_minus_limit_bare_p50"] == pytest.approx(3.0)
    verdict = {t["check"]: t["pass"] for t in targets}
    assert verdict["service / limit at saturation (mixed)"] is True
    assert verdict["service / naive, concurrency 1 (mixed)"] is False
    assert verdict["service / naive, concurrency 4 (mixed)"] is True
    assert verdict["sorted / unsorted at saturation (mixed)"] is True
    assert verdict["sort + padding cap / FIFO batches (mixed)"] is False
    assert verdict["added p50 latency, 1 item, 1 client (ms, mixed)"] is True
    assert verdict["RSS after 2000 / after 200 requests"] is True


def test_bad_options_fail_fast():
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--skip", "bogus"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "unknown" in p.stderr


# -- the whole run, CI-sized -----------------------------------------------------------------------
def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_quick_run(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(out.read_text())
    assert "service / limit at saturation" in p.stdout  # the table was printed
    for phase in ("meta", "limit", "service", "naive", "unsorted", "fifo", "memory", "ratios", "targets"):
        assert phase in res, phase
    assert res["meta"]["quick"] is True
    th = res["meta"]["threads"]
    assert (
        th["REWARDSERVE_TORCH_THREADS"] >= 1 and th["uvicorn_workers"] == 1 and th["TOKENIZERS_PARALLELISM"] == "false"
    )
    assert th["naive_server"]["torch_threads"] == th["REWARDSERVE_TORCH_THREADS"]
    assert th["limit_process"]["torch_threads"] == th["REWARDSERVE_TORCH_THREADS"]
    # the service's CPU default: one forward worker per thread, a lone forward with every thread
    n = th["REWARDSERVE_TORCH_THREADS"]
    assert th["service"]["batchers"]["minilm"] == {"forward_workers": n, "threads_alone": n, "threads_shared": 1}
    layouts = {(x["workers"], x["threads_per_worker"]) for x in res["limit"]["layouts"]}
    assert layouts == ({(1, n), (n, 1)} if n > 1 else {(1, 1)})

    lim = res["limit"]["workloads"]["mixed"]
    for key in ("items_per_s", "tokens_per_s", "forward_items_per_s", "forward_tokens_per_s"):
        assert _finite_positive(lim[key]), key
    assert _finite_positive(lim["encode"]["items_per_s"])
    # tokenization and forward one after the other: slower than either alone
    assert lim["items_per_s"] < min(lim["forward_items_per_s"], lim["encode"]["items_per_s"])
    assert lim["single_item_ms"]["p50"] <= lim["single_item_ms"]["p90"] <= lim["single_item_ms"]["p99"]
    assert {(x["workers"], x["threads_per_worker"]) for x in lim["sweep"]} == layouts
    assert (lim["best_layout"]["workers"], lim["best_layout"]["threads_per_worker"]) in layouts

    cells = [c for phase in ("service", "naive", "unsorted", "fifo") for c in res[phase]["mixed"]]
    assert len(res["service"]["mixed"]) == len(res["naive"]["mixed"]) == 4 and res["unsorted"]["mixed"]
    for c in cells:
        where = f"{c['server']} c={c['concurrency']} s={c['size']}"
        assert _finite_positive(c["items_per_s"]), where
        assert _finite_positive(c["tokens_per_s"]), where
        lat = c["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p99"], where
        assert c["rejected_503"] >= 0 and c["rejected_429"] >= 0

    mem = res["memory"]
    assert list(mem["rss_mb_after"]) == ["200", "2000"]
    assert all(_finite_positive(v) for v in mem["rss_mb_after"].values())
    assert _finite_positive(mem["ratio"])

    r = res["ratios"]
    assert _finite_positive(r["service_over_limit"]["mixed"]["ratio"])
    assert set(r["service_over_naive"]["mixed"]) == {"1", "4"}
    assert all(v["min_over_sizes"] is not None for v in r["service_over_naive"]["mixed"].values())
    assert _finite_positive(r["sorted_over_unsorted"]["ratio"])
    assert r["added_latency_ms"]["added_p50"] is not None and math.isfinite(r["added_latency_ms"]["added_p50"])
    one = next(c for c in res["service"]["mixed"] if c["concurrency"] == 1 and c["size"] == 1)
    assert 0 < one["added_ms"]["p50"] < one["latency_ms"]["p50"]  # the service's Server-Timing was read
    assert all(c["added_ms"] is None for c in res["naive"]["mixed"])  # the naive server sends none
    assert _finite_positive(r["length_aware_over_fifo"]["ratio"]) and res["fifo"]["mixed"]
    assert _finite_positive(r["rss_ratio"])
    assert {t["check"] for t in res["targets"]} >= {
        "service / limit at saturation (mixed)",
        "service / naive, concurrency 1 (mixed)",
        "service / naive, concurrency 4 (mixed)",
        "sorted / unsorted at saturation (mixed)",
        "added p50 latency, 1 item, 1 client (ms, mixed)",
        "RSS after 2000 / after 200 requests",
    }
    assert all(t["pass"] in (True, False) for t in res["targets"])


def test_judge_replay_alternates_forwards_batch_by_batch():
    from bench.judge import replay

    calls: list[tuple[str, int]] = []

    class Fake:
        def __init__(self, name: str):
            self.name = name

        def forward(self, batch):
            calls.append((self.name, batch[0]))

    backends = {"sequence_classifier": Fake("rm"), "judge": Fake("judge")}
    seconds = replay(backends, {"sequence_classifier": [[0], [1]], "judge": [[0], [1], [2]]}, times=2)
    assert {k: len(v) for k, v in seconds.items()} == {"sequence_classifier": 2, "judge": 2}  # one total per pass
    assert all(s >= 0 for v in seconds.values() for s in v)
    # pass 1: rm first, batch by batch; pass 2: the judge first; a contender with more batches goes on alone
    assert calls == [
        ("rm", 0), ("judge", 0), ("rm", 1), ("judge", 1), ("judge", 2),
        ("judge", 0), ("rm", 0), ("judge", 1), ("rm", 1), ("judge", 2),
    ]  # fmt: skip
