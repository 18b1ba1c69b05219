"""The GRPO benchmark (bench/grpo.py): grouped workloads, ratios, and one CI-sized run on a tiny
decoder reward model (sharing vs no sharing vs naive, all through real servers)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.grpo import compute_ratios
from bench.workload import generate, spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("g", [1, 4, 8, 16])
def test_grpo_workloads_are_groups_of_consecutive_items_with_one_prompt(g):
    assert spec(f"grpo{g}").group == g
    items = generate(f"grpo{g}", 64, seed=0)
    assert len(items) == 64 and items == generate(f"grpo{g}", 64, seed=0)
    for k in range(0, 64, g):
        group = items[k : k + g]
        assert len({it["prompt"] for it in group}) == 1
        assert g == 1 or len({it["response"] for it in group}) > 1
    if g > 1:
        assert items[0]["prompt"] != items[g]["prompt"]


def test_ratios_and_targets_per_group_size():
    def cell(x):
        return [{"items_per_s": x}]

    cells = {
        "share": {"grpo1": cell(10.0), "grpo8": cell(30.0)},
        "noshare": {"grpo1": cell(10.0), "grpo8": cell(15.0)},
        "naive": {"grpo1": cell(5.0), "grpo8": cell(12.0)},
    }
    ratios, targets = compute_ratios(cells, (1, 8))
    assert ratios["8"]["share_over_noshare"] == 2.0 and ratios["8"]["share_over_naive"] == 2.5
    assert ratios["1"]["share_over_noshare"] == 1.0 and ratios["1"]["noshare_over_naive"] == 2.0
    assert [(t["check"], t["pass"]) for t in targets] == [
        ("share / noshare at G = 8", True),
        ("share / noshare at G = 1", True),
    ]
    ratios, targets = compute_ratios({"share": {"grpo1": cell(10.0)}}, (1,))
    assert ratios["1"]["share_over_noshare"] is None and all(t["pass"] is None for t in targets)


@pytest.mark.slow
def test_grpo_run_on_a_tiny_decoder(tiny, tmp_path):
    out = tmp_path / "grpo.json"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "grpo",
            "--model",
            str(tiny["dec_chat"]),
            "--groups",
            "1,4",
            "--seconds",
            "1",
            "--warmup",
            "0.3",
            "--pool",
            "32",
            "--max-length",
            "256",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    assert "share/noshare" in p.stdout  # the table was printed
    res = json.loads(out.read_text())
    assert res["meta"]["command"].startswith("python -m bench grpo --model")
    for g in ("1", "4"):
        assert 0 < res["meta"]["tokens"][g]["prompt_share"] < 1
        r = res["ratios"][g]
        for key in (
            "share_items_per_s",
            "noshare_items_per_s",
            "naive_items_per_s",
            "share_over_noshare",
            "share_over_naive",
        ):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (g, key)
    for name in ("share", "noshare", "naive"):
        for w in ("grpo1", "grpo4"):
            (c,) = res["cells"][name][w]
            assert c["other_errors"] == 0 and c["requests"] > 0 and c["size"] == int(w[4:])
    assert {t["check"] for t in res["targets"]} == {"share / noshare at G = 8", "share / noshare at G = 1"}
