"""rewardserve against vLLM (``python -m bench peer``): the engine an RL team would otherwise pick.

Three contenders on the same decoder reward model, started side by side and measured in one run:

- ``share``: the service with its defaults (a decoder shares the prompt prefix of a batch);
- ``noshare``: the same service with ``share_prompt_prefix: false``;
- ``vllm``: vLLM's pooling server (``--runner pooling``; ``POST /classify`` with
  ``use_activation: false``: the score head's raw logit), its defaults otherwise (automatic prefix
  caching across requests included). It receives the **token ids rewardserve builds** for each item
  (chat template, truncation), so both score the same sequences; the service gets the text and
  tokenizes it itself, as it does for every client.

Cells: the grpo workloads (bench/workload.py; one request = one prompt's G responses) at each G of
``--groups``, ``--concurrency`` clients (2, as ``python -m bench grpo``), and a distinct-prompt cell
(every request one item with a prompt of its own, ``--distinct-concurrency`` clients). The cells run
in ``--rounds`` rounds; in each round every cell runs against every contender back to back, in an
order that rotates from cell to cell and round to round, so a shared machine's drift shifts every
contender alike; the spread over rounds is reported. Every (cell, round) draws items never sent
before (its own seed), so vLLM's prefix cache never sees a sequence twice — as in RL training, where
each step's responses are new (prompts within a group do share, which is the point).

Then the **judge cells** (bench/peer_judge.py; ``--skip judge`` leaves them out, ``--skip rm`` runs
only them): the service with a ``kind: judge`` backbone (``share``) against vLLM's generate runner
asked for the next token's raw log-probs of the service's yes/no ids on the service's rendered token
ids (``vllm``), in the same cell shapes (``judge grpo G=8``, ``judge distinct``), on servers of their
own started once the reward model's are stopped.

Before the load, a check pass sends the same groups to all three and compares the raw rewards item by
item (max |Δ|) and the token counts. Peak resident memory of each contender's whole process tree
(vLLM runs its engine in a child process) is sampled through the run. Writes
``bench/results/peer.json`` and prints one table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .options import REPO, Options, log
from .report import fmt, json_safe
from .workload import WORKLOADS, generate, spec

DEFAULT_OUT = REPO / "bench" / "results" / "peer.json"
DEFAULT_QUICK_OUT = REPO / "bench" / "results" / "peer-quick.json"
CONTENDERS = ("share", "noshare", "vllm")
CELL_KINDS = ("rm", "judge")  # --skip rm / judge: the reward model's cells, the judge's
MODEL = "rm"  # the reward model's name in the service's config
# items/s of the service with its defaults (share) over vLLM's, per cell (issue targets, on the CPU)
TARGETS = {"grpo8": 1.3, "grpo1": 1.0, "distinct": 1.0}
JUDGE_GROUPS = (8,)  # the judge's grpo cells (beside its distinct-prompt cell)
# max |Δ| of raw rewards between contenders that counts as "the same reward"
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


@dataclass(frozen=True)
class Cell:
    """One load cell: ``label`` in the report, the ``workload`` its items come from, ``size`` items
    per request, ``concurrency`` clients."""

    label: str
    workload: str
    size: int
    concurrency: int

    @property
    def title(self) -> str:
        if self.label.startswith("judge"):
            return f"judge grpo G={self.size}" if "grpo" in self.label else "judge distinct"
        return f"grpo G={self.size}" if self.label.startswith("grpo") else "distinct prompts"


def plan_cells(groups: tuple[int, ...], concurrency: int, distinct_concurrency: int) -> list[Cell]:
    cells = [Cell(f"grpo{g}", f"grpo{g}", g, concurrency) for g in groups]
    if distinct_concurrency > 0:
        # every request one item whose prompt no other item has (grpo1's items: the grpo length mix)
        cells.append(Cell("distinct", "grpo1", 1, distinct_concurrency))
    return cells


def plan_judge_cells(groups: tuple[int, ...], concurrency: int, distinct_concurrency: int) -> list[Cell]:
    """The judge's cells: the same shapes as the reward model's (a GRPO group per request, and
    distinct prompts one item per request), labelled ``judge-…``."""
    return [
        Cell(f"judge-{c.label}", c.workload, c.size, c.concurrency)
        for c in plan_cells(groups, concurrency, distinct_concurrency)
    ]


def cell_seed(seed: int, round_: int, k: int) -> int:
    """The items of (round, cell k): a seed of their own, so no sequence is sent twice in a run."""
    return seed + 1000 * (round_ + 1) + k


CHECK_SEED_OFFSET = 999_983  # the check pass's items: never among the load's


def rotation(names: list[str], i: int) -> list[str]:
    """The contenders' order for the i-th (round, cell): each goes first, second, … equally often."""
    k = i % len(names) if names else 0
    return names[k:] + names[:k]


# ---------------------------------------------------------------------------------------------- judge


def judge_slot(reason: str = "left out (--skip judge)") -> dict:
    """The judge section of the result when its cells do not run (bench/peer_judge.py: the cells)."""
    return {"skipped": reason}


# ------------------------------------------------------------------------------------------- encoding


def encoder(model: str | Path, max_length: int) -> Any:
    """The service's own encoder for the model (chat template, truncation): the ids vLLM is sent."""
    from rewardserve.backends.sequence_classifier import SequenceClassifierBackend

    return SequenceClassifierBackend("rm", MODEL, str(model), max_length=max_length, share_prompt_prefix=False)


def encode_items(be: Any, items: list[dict]) -> tuple[list[list[int]], dict]:
    """Token ids of each item, and the pool's token statistics (mean tokens, the prompt's share)."""
    encs = [be.encode(it["prompt"], it["response"]) for it in items]
    ids = [list(e.input_ids) for e in encs]
    total = sum(len(x) for x in ids)
    prompt = sum(e.segments.count(0) for e in encs if e.segments)
    return ids, {"mean_tokens": total / len(ids), "prompt_share": prompt / total, "items": len(ids)}


# ------------------------------------------------------------------------------------ reward check


def max_abs_diff(a: list[float], b: list[float]) -> float | None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} rewards")
    return max((abs(x - y) for x, y in zip(a, b)), default=None)


def compare_rewards(rewards: dict[str, list[float]], tolerance: float) -> dict:
    """Item-by-item comparison of every pair of contenders: max |Δ|, and whether it is within tolerance."""
    names = list(rewards)
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = max_abs_diff(rewards[a], rewards[b])
            pairs[f"{a} vs {b}"] = {"max_abs_diff": d, "within_tolerance": d is not None and d <= tolerance}
    n = len(next(iter(rewards.values()))) if rewards else 0
    return {"items": n, "tolerance": tolerance, "pairs": pairs}


def reward_check(
    rewards: dict[str, list[float]], tokens: dict[str, int], per_g: dict[str, dict], tolerance: float
) -> dict:
    """The reward check's record: every contender's rewards compared item by item over all group
    sizes (``per_g``: the same per size), the tokens each reported, and a few rewards to eyeball."""
    res = compare_rewards(rewards, tolerance)
    res["per_group_size"] = per_g
    res["tokens"] = tokens
    res["tokens_equal"] = len(set(tokens.values())) <= 1
    res["first_rewards"] = {n: r[:4] for n, r in rewards.items()}
    return res


def score_rewardserve(
    url: str, groups: list[list[dict]], timeout: float = 600.0, model: str = MODEL
) -> tuple[list[float], int]:
    """Raw rewards of every item (one request per group) and the tokens the service reports."""
    import httpx

    out: list[float] = []
    tokens = 0
    with httpx.Client(base_url=url, timeout=timeout) as c:
        for g in groups:
            r = c.post("/v1/score", json={"items": g})
            r.raise_for_status()
            body = r.json()
            out += [float(x["raw"][model]) for x in body["results"]]
            tokens += int(body["usage"]["tokens"])
    return out, tokens


def score_vllm(url: str, groups: list[list[list[int]]], timeout: float = 600.0) -> tuple[list[float], int]:
    """Raw rewards from vLLM's ``/classify`` (token ids in, one request per group) and its token count."""
    import httpx

    from .peer_load import classify_body, classify_rewards
    from .peer_vllm import SERVED_NAME

    out: list[float] = []
    tokens = 0
    with httpx.Client(base_url=url, timeout=timeout) as c:
        for g in groups:
            r = c.post("/classify", json=classify_body(SERVED_NAME, g))
            if r.status_code != 200:
                raise RuntimeError(f"vLLM /classify answered {r.status_code}: {r.text[:2000]}")
            body = r.json()
            out += classify_rewards(body)
            tokens += int(body["usage"]["prompt_tokens"])
    return out, tokens


def check_rewards(
    servers: dict[str, Any], be: Any, groups: tuple[int, ...], n_items: int, seed: int, tolerance: float
) -> dict:
    """Send the same groups (items never used by the load) to every contender; compare item by item."""
    rewards: dict[str, list[float]] = {n: [] for n in servers}
    tokens: dict[str, int] = dict.fromkeys(servers, 0)
    per_g = {}
    for g in groups:
        n = max(g, n_items - n_items % g)
        items = generate(f"grpo{g}", n, seed + CHECK_SEED_OFFSET)
        ids, _ = encode_items(be, items)
        text_groups = [items[k : k + g] for k in range(0, n, g)]
        id_groups = [ids[k : k + g] for k in range(0, n, g)]
        got = {}
        for name, s in servers.items():
            if s.kind == "vllm":
                r, t = score_vllm(s.url, id_groups)
            else:
                r, t = score_rewardserve(s.url, text_groups)
            got[name] = r
            rewards[name] += r
            tokens[name] += t
        per_g[str(g)] = compare_rewards(got, tolerance)
    return reward_check(rewards, tokens, per_g, tolerance)


# ------------------------------------------------------------------------------------------ memory


class RssSampler:
    """Samples each contender's process-tree RSS every ``interval`` seconds; keeps the peak (whole run
    and per phase label)."""

    def __init__(self, servers: dict[str, Any], interval: float = 1.0):
        self.servers, self.interval = servers, interval
        self.peak: dict[str, float] = {}
        self.phase_peak: dict[str, dict[str, float]] = {}
        self.phase = "start"
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, float | None]:
        from .peer_vllm import process_children, tree_rss_mb

        now = {}
        children = process_children()  # one pass over /proc for every contender
        for name, s in self.servers.items():
            mb = tree_rss_mb(s.pid, children)
            now[name] = mb
            if mb is not None:
                self.peak[name] = max(self.peak.get(name, 0.0), mb)
                ph = self.phase_peak.setdefault(self.phase, {})
                ph[name] = max(ph.get(name, 0.0), mb)
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


# --------------------------------------------------------------------------------------- summaries


def _spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"median": None, "min": None, "max": None, "rounds": []}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "rounds": xs}


def per_cpu(r: dict) -> float | None:
    """Items/s over the CPU cores the server's process tree used in the cell (warm-up and drain
    included), or None when unknown."""
    cores = r.get("server_cpu_cores")
    return r["items_per_s"] / cores if cores else None


def summarize(cells: dict[str, dict[str, list[dict]]]) -> tuple[dict, dict]:
    """Per cell and contender: items/s (median over rounds, min, max), p50 latency (median of the
    rounds' p50) and p99 (the worst round's); per cell the ratios share / vllm, noshare / vllm and
    share / noshare, paired by round (the contenders of one round ran back to back)."""
    summary: dict = {}
    ratios: dict = {}
    for label, by_name in cells.items():
        summary[label] = {}
        for name, rounds in by_name.items():
            p50 = [r["latency_ms"]["p50"] for r in rounds if r["latency_ms"]["p50"] is not None]
            p99 = [r["latency_ms"]["p99"] for r in rounds if r["latency_ms"]["p99"] is not None]
            summary[label][name] = {
                "items_per_s": _spread([r["items_per_s"] for r in rounds]),
                # items per CPU-second the contender's process tree used during the cell: on a machine
                # shared with other work, what it did with the CPU it got
                "items_per_cpu_s": _spread([per_cpu(r) for r in rounds]),
                "p50_ms": statistics.median(p50) if p50 else None,
                "p99_ms": max(p99) if p99 else None,
                "steady": all(r.get("steady", True) for r in rounds),
                "repeats": any(r.get("items_sent", 0) > r.get("pool", float("inf")) for r in rounds),
            }
        ratios[label] = {}
        for a, b in (("share", "vllm"), ("noshare", "vllm"), ("share", "noshare")):
            if a in by_name and b in by_name:
                paired = [
                    x["items_per_s"] / y["items_per_s"] for x, y in zip(by_name[a], by_name[b]) if y["items_per_s"] > 0
                ]
                ratios[label][f"{a}_over_{b}"] = _spread(paired)
                per = [x / y for x, y in zip(map(per_cpu, by_name[a]), map(per_cpu, by_name[b])) if x and y]
                ratios[label][f"{a}_over_{b}_per_cpu"] = _spread(per)
    return summary, ratios


def check_targets(ratios: dict, device: str) -> list[dict]:
    """The issue's targets (CPU): the service with its defaults (share) over vLLM, median of the
    rounds' paired ratios; on another device the numbers are reported without a verdict."""
    out = []
    for label, goal in TARGETS.items():
        r = ratios.get(label, {}).get("share_over_vllm", {})
        v = r.get("median")
        out.append(
            {
                "check": f"share / vllm, {label}",
                "value": v,
                "worst_round": r.get("min"),
                "target": f">= {goal:g}",
                "pass": None if v is None or device != "cpu" else v >= goal,
            }
        )
    return out


# -------------------------------------------------------------------------------------------- table


def _ipss(s: dict | None) -> str:
    if not s or s["items_per_s"]["median"] is None:
        return "-"
    x = s["items_per_s"]
    if len(x["rounds"]) > 1:
        return f"{x['median']:.2f} ({x['min']:.2f}–{x['max']:.2f})"
    return f"{x['median']:.2f}"


def _ratio(r: dict | None) -> str:
    if not r or r.get("median") is None:
        return "-"
    if len(r["rounds"]) > 1:
        return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"
    return f"{r['median']:.2f}"


def format_table(res: dict) -> str:
    m = res["meta"]
    names = m["contenders"]
    lines = [
        (
            f"rewardserve bench peer — {m['model'] if m['model'] != '-' else 'judge cells only'} "
            f"({m['device']}, {m['dtype']}) — {m['cpu_count']} CPUs, "
            f"load avg at start {m['loadavg_start']}, at end {m.get('loadavg_end')}"
        ),
        f"vLLM {m.get('vllm_version') or '-'}; rewardserve torch threads {m['threads']}",
        (
            f"{m['rounds']} round(s), {m['seconds']:g} s cells after {m['warmup']:g} s warm-up, contenders "
            f"interleaved (order rotates per cell and round); items/s median (min–max over rounds)"
        ),
        "per CPU-s: share / vllm of items per CPU-second each server's process tree used in the cell",
        "",
        f"  {'cell':17s} {'conc':>4s} {'tok/item':>8s} {'prompt%':>7s} | "
        + " ".join(f"{n + ' items/s':>20s}" for n in names)
        + f" | {'share/vllm':>18s} {'noshare/vllm':>18s} {'per CPU-s':>18s} | p50 / p99 ms "
        + " / ".join(names),
    ]
    for c in m["cells"]:
        label = c["label"]
        s = res["summary"].get(label, {})
        r = res["ratios"].get(label, {})
        tok = m["tokens"].get(label, {})
        lat = "  ".join(f"{fmt(s[n]['p50_ms'], 0)}/{fmt(s[n]['p99_ms'], 0)}" if n in s else "-" for n in names)
        flags = [f"{n}: not steady" for n in names if n in s and not s[n]["steady"]]
        flags += [f"{n}: items repeated" for n in names if n in s and s[n]["repeats"]]
        lines.append(
            f"  {c['title']:17s} {c['concurrency']:>4d} {fmt(tok.get('mean_tokens'), 0):>8s} "
            f"{fmt(100 * tok['prompt_share'] if tok else None, 0):>7s} | "
            + " ".join(f"{_ipss(s.get(n)):>20s}" for n in names)
            + f" | {_ratio(r.get('share_over_vllm')):>18s} {_ratio(r.get('noshare_over_vllm')):>18s} "
            + f"{_ratio(r.get('share_over_vllm_per_cpu')):>18s} | {lat}"
            + (f"  ({'; '.join(flags)})" if flags else "")
        )
    chk = res.get("rewards")
    if chk:
        pairs = ", ".join(f"{k} {fmt(v['max_abs_diff'], 7)}" for k, v in chk["pairs"].items())
        ok = all(v["within_tolerance"] for v in chk["pairs"].values())
        lines += [
            "",
            f"rewards, {chk['items']} items compared one by one: max |Δ| {pairs} "
            f"({'all' if ok else 'NOT all'} within {chk['tolerance']:g}); tokens "
            + ("equal" if chk["tokens_equal"] else f"DIFFER {chk['tokens']}"),
        ]
    rss = res.get("rss_mb", {})
    if rss:
        lines.append(
            "peak RSS of each process tree, MB: "
            + ", ".join(
                f"{n} {fmt(rss['peak'].get(n), 0)} (idle {fmt(rss['idle_after_start'].get(n), 0)})" for n in names
            )
        )
    lines.append("")
    rm_ran = any(not c["label"].startswith("judge") for c in m["cells"])
    for t in res["targets"] if rm_ran else []:  # the reward model's cells' targets (none for the judge)
        ok = "skip" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(
            f"  {t['check']:28s} {fmt(t['value'], 2):>6s} (worst round {fmt(t['worst_round'], 2)}) "
            f"{t['target']:>7s}  {ok}"
        )
    j = res.get("judge") or {}
    if "skipped" in j:
        lines.append(f"  judge: {j['skipped']}")
    else:
        lines.append(
            f"judge cells: {j.get('model')} as a judge ({j.get('question')!r}; yes {j.get('yes_tokens')}, "
            f"no {j.get('no_tokens')}); rewardserve kind: judge (share) vs vLLM's generate runner "
            "(/v1/completions, 1 token, logprob_token_ids = the yes/no ids)"
        )
        if j.get("error"):
            lines.append(f"  the judge cells FAILED: {j['error'][:500]}")
        chk = j.get("rewards")
        if chk:
            pairs = ", ".join(f"{k} {fmt(v['max_abs_diff'], 7)}" for k, v in chk["pairs"].items())
            ok = all(v["within_tolerance"] for v in chk["pairs"].values())
            lines.append(
                f"  judge rewards, {chk['items']} items compared one by one: max |Δ| {pairs} "
                f"({'all' if ok else 'NOT all'} within {chk['tolerance']:g})"
            )
        jr = j.get("rss_mb", {})
        if jr:
            lines.append(
                "  judge peak RSS, MB: "
                + ", ".join(
                    f"{n} {fmt(v, 0)} (idle {fmt(jr['idle_after_start'].get(n), 0)})" for n, v in jr["peak"].items()
                )
            )
        if j.get("startup_seconds"):
            st = ", ".join(f"{n} {fmt(v[0] if v else None, 0)} s" for n, v in j["startup_seconds"].items())
            lines.append(f"  judge start-up: {st}; judge cells' wall time {fmt(j.get('wall_seconds'), 0)} s")
    lines.append(f"\nwall time {m['wall_seconds']:.0f} s; JSON: {m['out']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- run


def run_cell(
    server: Any, cell: Cell, seed: int, ids_file: Path | None, o: Options, env: dict, judge_ids: tuple | None = None
) -> dict:
    """One closed-loop cell against one contender (``judge_ids``: the judge's (yes ids, no ids), for
    vLLM's generate runner)."""
    from .peer_vllm import SERVED_NAME

    api = "rewardserve" if server.kind != "vllm" else ("vllm-judge" if judge_ids else "vllm")
    cmd = [
        sys.executable,
        "-m",
        "bench.peer_load",
        "--api",
        api,
        "--url",
        server.url,
        "--workload",
        cell.workload,
        "--seed",
        str(seed),
        "--pool",
        str(o.pool),
        "--concurrency",
        str(cell.concurrency),
        "--size",
        str(cell.size),
        "--seconds",
        str(o.seconds),
        "--warmup",
        str(o.warmup),
        "--max-seconds",
        str(o.max_cell_seconds),
    ]
    if server.kind == "vllm":
        cmd += ["--ids", str(ids_file), "--model-name", SERVED_NAME]
        if judge_ids:
            cmd += ["--yes-ids", ",".join(map(str, judge_ids[0])), "--no-ids", ",".join(map(str, judge_ids[1]))]
    p = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=o.max_cell_seconds + 120, cwd=REPO
    )
    if p.returncode != 0:
        raise RuntimeError(f"load {server.name} {cell.label} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    res: dict = json.loads(p.stdout.strip().splitlines()[-1])
    if res["requests"] == 0 and res["other_errors"]:
        raise RuntimeError(f"{server.name} {cell.label}: every request failed; server log:\n{server.log_tail()}")
    return res


def run_rounds(
    servers: dict[str, Any],
    cells: list[Cell],
    all_cells: list[Cell],
    ids_files: dict[tuple[int, str], Path],
    o: Options,
    env: dict,
    rounds: int,
    seed: int,
    pool: int,
    out_cells: dict[str, dict[str, list[dict]]],
    on_round: Any = None,
    judge_ids: tuple | None = None,
) -> None:
    """Every cell of ``cells`` against every contender of ``servers``, ``rounds`` times, in rotating
    order; each result appended to ``out_cells[label][contender]`` (``on_round()`` after each round)."""
    from .peer_vllm import tree_cpu_seconds

    i = 0
    for r in range(rounds):
        for c in cells:
            out_cells.setdefault(c.label, {n: [] for n in servers})
            for name in rotation(list(servers), i):
                s = servers[name]
                cpu0, w0 = tree_cpu_seconds(s.pid), time.monotonic()
                x = run_cell(s, c, cell_seed(seed, r, all_cells.index(c)), ids_files[(r, c.label)], o, env, judge_ids)
                idle_ok = s.wait_idle(o.drain_timeout)
                cpu1, w1 = tree_cpu_seconds(s.pid), time.monotonic()
                x.update(
                    round=r,
                    server=name,
                    drained=idle_ok,
                    pool=pool,
                    server_cpu_cores=(cpu1 - cpu0) / (w1 - w0) if cpu0 is not None and cpu1 is not None else None,
                )
                if not idle_ok:
                    log(f"{name}: still busy {o.drain_timeout:.0f} s after {c.label}; restarting it")
                    s.restart()
                out_cells[c.label][name].append(x)
                lat = x["latency_ms"]
                log(
                    f"round {r} {name:8s} {c.label:14s} c={c.concurrency:<2d} {x['items_per_s']:7.2f} items/s "
                    f"p50 {fmt(lat['p50'], 0)} ms p99 {fmt(lat['p99'], 0)} ms  "
                    f"cores {fmt(x['server_cpu_cores'], 2)}  load {os.getloadavg()[0]:.1f}"
                )
            i += 1
        if on_round is not None:
            on_round(r)


def start_all(servers: dict[str, Any], what: str) -> None:
    log(f"peer: starting {', '.join(servers)} ({what}; vLLM takes minutes on a CPU)")
    with ThreadPoolExecutor(len(servers)) as ex:
        for fut in [ex.submit(s.start) for s in servers.values()]:
            fut.result()


def vllm_settings(v: Any, request: dict) -> dict:
    return {
        "command": ["python", "-m", "vllm.entrypoints.openai.api_server", *v.args],
        "env": v.extra_env,
        "engine_config": v.engine_config(),
        "request": request,
    }


def run_peer(
    model: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    vllm_python: str | None = None,
    groups: tuple[int, ...] = (1, 8, 16),
    concurrency: int = 2,
    distinct_concurrency: int = 8,
    rounds: int = 2,
    seconds: float = 20.0,
    warmup: float = 5.0,
    pool: int = 512,
    seed: int = 0,
    threads: int | None = None,
    max_length: int = 1024,
    check_items: int = 16,
    contenders: tuple[str, ...] = CONTENDERS,
    out: str | Path | None = None,
    print_table: bool = True,
    command: str | None = None,
    reward_model_cells: bool = True,
    judge: bool = True,
    judge_model: str | Path | None = None,
    judge_groups: tuple[int, ...] = JUDGE_GROUPS,
) -> dict:
    """Run the comparison; write the JSON to ``out`` (default bench/results/peer.json) and return it.
    First the reward-model cells (``reward_model_cells``), then, on their own servers, the judge cells
    (``judge``: the service's judge backbone vs vLLM's generate runner, bench/peer_judge.py)."""
    from .grpo import smollm2_reward_model, write_configs
    from .peer_judge import (
        JUDGE_MODEL,
        QUESTION,
        check_judge_rewards,
        encode_judge_items,
        judge_encoder,
        judge_model_path,
        label_ids,
        write_judge_config,
    )
    from .peer_vllm import VllmServer, probe_vllm
    from .servers import Server, contender_env

    t0 = time.monotonic()
    version = None
    if "vllm" in contenders:
        version, how = probe_vllm(vllm_python)
        if version is None:
            raise VllmMissing(how)
        log(f"vLLM {version} at {vllm_python}")
    model = Path(model) if model else (smollm2_reward_model() if reward_model_cells else Path("-"))
    out_path = Path(out) if out else DEFAULT_OUT
    o = Options.make(
        seconds=seconds,
        warmup=warmup,
        pool=pool,
        seed=seed,
        threads=threads,
        drain_timeout=60.0,
        max_cell_seconds=warmup + seconds + 90.0,
    )
    cells = plan_cells(groups, concurrency, distinct_concurrency) if reward_model_cells else []
    judge_contenders = [n for n in ("share", "vllm") if n in contenders]
    jcells = plan_judge_cells(judge_groups, concurrency, distinct_concurrency) if judge and judge_contenders else []
    all_cells = cells + jcells
    tmp = Path(tempfile.mkdtemp(prefix="rewardserve-bench-peer-"))
    meta: dict = {
        "model": str(model),
        "device": device,
        "dtype": dtype,
        "max_length": max_length,
        "groups": list(groups),
        "cells": [{**c.__dict__, "title": c.title} for c in all_cells],
        "rounds": rounds,
        "seconds": seconds,
        "warmup": warmup,
        "pool": pool,
        "seed": seed,
        "threads": o.threads,
        "omp_wait_policy_rewardserve": o.omp_wait_policy,
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "contenders": list(contenders),
        "workload_specs": {c.workload: WORKLOADS[c.workload].to_dict() for c in all_cells},
        "vllm_version": version,
        "vllm_python": vllm_python,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "out": str(out_path),
        "command": command,
        "tokens": {},
    }
    res: dict = {"meta": meta, "judge": judge_slot() if not jcells else {}, "cells": {}}
    out_cells: dict[str, dict[str, list[dict]]] = res["cells"]

    def write_partial(what: str) -> None:
        """The rounds so far, in case the run is cut short (the final JSON replaces it)."""
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial = {**res, "partial": what}
        out_path.write_text(json.dumps(json_safe(partial), indent=2) + "\n", encoding="utf-8")

    def encode_cells(be: Any, which: list[Cell], encode: Any) -> dict[tuple[int, str], Path]:
        files = {}
        for r in range(rounds):
            for c in which:
                items = generate(spec(c.workload), pool, cell_seed(seed, r, all_cells.index(c)))
                ids, st = encode(be, items)
                f = files[(r, c.label)] = tmp / f"ids-{c.label}-r{r}.json"
                f.write_text(json.dumps(ids))
                if r == 0:
                    meta["tokens"][c.label] = st
        return files

    env = contender_env(o, tmp, "load")
    # ------------------------------------------------------------------ the reward model's cells
    if cells:
        # the token ids the service builds for every item of every (round, cell), and the check's
        log("encoding the workloads with the service's encoder (the ids vLLM is sent)")
        be = encoder(model, max_length)
        ids_files = encode_cells(be, cells, encode_items)
        configs = write_configs(model, tmp, device, dtype, max_length)
        servers: dict[str, Any] = {}
        try:
            for name in contenders:
                if name == "vllm":
                    assert vllm_python is not None
                    servers[name] = VllmServer(vllm_python, model, tmp, dtype, max_length, device)
                else:
                    servers[name] = Server(name, "service", str(configs[name]), contender_env(o, tmp, name), tmp)
            with RssSampler(servers) as rss:
                start_all(servers, f"reward model {model}")
                meta["startup_seconds"] = {n: s.startup_seconds for n, s in servers.items()}
                if "vllm" in servers:
                    meta["vllm_settings"] = vllm_settings(
                        servers["vllm"],
                        {"endpoint": "/classify", "use_activation": False, "add_special_tokens": False},
                    )
                time.sleep(2.0)
                idle = rss.sample()

                log("rewards: the same groups to every contender, compared item by item")
                rss.phase = "check"
                res["rewards"] = check_rewards(servers, be, groups, check_items, seed, TOLERANCE.get(dtype, 1e-4))
                del be
                gc.collect()
                for pair, x in res["rewards"]["pairs"].items():
                    log(f"rewards {pair}: max |Δ| {x['max_abs_diff']:.2e}")

                rss.phase = "load"
                run_rounds(
                    servers,
                    cells,
                    all_cells,
                    ids_files,
                    o,
                    env,
                    rounds,
                    seed,
                    pool,
                    out_cells,
                    on_round=lambda r: write_partial(f"{r + 1} of {rounds} rounds of the reward model's cells"),
                )
                res["rss_mb"] = {"peak": rss.peak, "idle_after_start": idle, "peak_by_phase": rss.phase_peak}
            meta["restarts"] = {n: s.restarts for n, s in servers.items()}
        finally:
            for s in servers.values():
                s.stop()

    # -------------------------------------------------------------------------- the judge's cells
    def judge_phase() -> None:
        jt0 = time.monotonic()
        jmodel = judge_model_path(judge_model)
        jdir = tmp / "judge"
        jdir.mkdir()
        log(f"judge: encoding the workloads with the service's judge encoder ({jmodel})")
        jbe = judge_encoder(jmodel, max_length)
        yes, no = label_ids(jbe)
        jres: dict = res["judge"]
        jres.update(
            model=str(jmodel),
            model_name=JUDGE_MODEL,
            question=QUESTION,
            yes_ids=yes,
            no_ids=no,
            yes_tokens=list(jbe.questions[0].yes),
            no_tokens=list(jbe.questions[0].no),
            contenders=judge_contenders,
            cells=[c.label for c in jcells],
        )
        jfiles = encode_cells(jbe, jcells, encode_judge_items)
        jconfig = write_judge_config(jmodel, jdir, device, dtype, max_length)
        jservers: dict[str, Any] = {}
        try:
            for name in judge_contenders:
                if name == "vllm":
                    assert vllm_python is not None
                    jservers[name] = VllmServer(vllm_python, jmodel, jdir, dtype, max_length, device, runner="generate")
                else:
                    jservers[name] = Server(name, "service", str(jconfig), contender_env(o, jdir, name), jdir)
            with RssSampler(jservers) as jrss:
                start_all(jservers, f"judge {jmodel}")
                jres["startup_seconds"] = {n: s.startup_seconds for n, s in jservers.items()}
                if "vllm" in jservers:
                    from .peer_load import judge_body
                    from .peer_vllm import SERVED_NAME

                    jres["vllm_settings"] = vllm_settings(
                        jservers["vllm"],
                        {
                            "endpoint": "/v1/completions",
                            **judge_body(SERVED_NAME, [[0]], yes, no),
                            "prompt": "<token ids>",
                        },
                    )
                time.sleep(2.0)
                jidle = jrss.sample()
                log("judge rewards: the same groups to every contender, compared item by item")
                jrss.phase = "check"
                sizes = sorted({c.size for c in jcells})
                jres["rewards"] = check_judge_rewards(
                    jservers, jbe, sizes, check_items, seed, TOLERANCE.get(dtype, 1e-4)
                )
                del jbe
                gc.collect()
                for pair, x in jres["rewards"]["pairs"].items():
                    log(f"judge rewards {pair}: max |Δ| {x['max_abs_diff']:.2e}")
                jrss.phase = "load"
                run_rounds(
                    jservers,
                    jcells,
                    all_cells,
                    jfiles,
                    o,
                    env,
                    rounds,
                    seed,
                    pool,
                    out_cells,
                    on_round=lambda r: write_partial(f"{r + 1} of {rounds} rounds of the judge's cells"),
                    judge_ids=(yes, no),
                )
                jres["rss_mb"] = {"peak": jrss.peak, "idle_after_start": jidle, "peak_by_phase": jrss.phase_peak}
            jres["restarts"] = {n: s.restarts for n, s in jservers.items()}
        finally:
            for s in jservers.values():
                s.stop()
        jres["wall_seconds"] = time.monotonic() - jt0

    if jcells:
        try:
            judge_phase()
        except Exception as e:
            if not cells:
                raise
            # the reward model's cells stand on their own: keep them, and say why the judge's are missing
            log(f"judge cells failed: {e!r}")
            res["judge"]["error"] = repr(e)[:4000]
    res["summary"], res["ratios"] = summarize(res["cells"])
    res["targets"] = check_targets(res["ratios"], device)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["wall_seconds"] = time.monotonic() - t0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(json_safe(res), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(tmp, ignore_errors=True)
    if print_table:
        print(format_table(res), flush=True)
    return res


class VllmMissing(RuntimeError):
    """vLLM cannot be imported from --vllm-python; the message says how to install it."""


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a decoder sequence-classifier folder (default: the grpo bench's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument(
        "--vllm-python",
        default=os.environ.get("BENCH_VLLM_PYTHON"),
        help="the Python of a virtualenv with vLLM (default $BENCH_VLLM_PYTHON)",
    )
    p.add_argument("--groups", type=_ints, default=(1, 8, 16), help="G values of the grpo cells (default 1,8,16)")
    p.add_argument("--concurrency", type=int, default=2, help="clients of the grpo cells (default 2)")
    p.add_argument(
        "--distinct-concurrency", type=int, default=8, help="clients of the distinct-prompt cell (0 skips it)"
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds of every cell × contender (default 2, quick 1)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per cell (default 20, quick 4)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds per cell (default 5, quick 1)")
    p.add_argument("--pool", type=int, default=None, help="items per (round, cell), a multiple of 16 (default 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="the service's torch threads (default: CPU count)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--check-items", type=int, default=16, help="items per G in the reward check (default 16)")
    p.add_argument(
        "--skip",
        default="",
        help="what to leave out: contenders (share, noshare, vllm) and/or cells: rm (the reward model's), "
        "judge (the judge's)",
    )
    p.add_argument(
        "--judge-model",
        default=None,
        help="the judge cells' causal LM with a chat template (default: the converted SmolLM2-135M-Instruct policy)",
    )
    p.add_argument("--judge-groups", type=_ints, default=JUDGE_GROUPS, help="G values of the judge's grpo cells (8)")
    p.add_argument("--quick", action="store_true", help="1 round of 4 s cells, pool 128")
    p.add_argument("--out", default=None, help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)})")
    a = p.parse_args(argv)
    skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    if skip - {*CONTENDERS, *CELL_KINDS}:
        p.error(f"--skip: unknown {sorted(skip - {*CONTENDERS, *CELL_KINDS})}")
    if not set(a.groups) | set(a.judge_groups) <= {1, 4, 8, 16}:
        p.error("--groups and --judge-groups must be subsets of 1,4,8,16")

    def pick(x, full, quick):
        return x if x is not None else (quick if a.quick else full)

    pool = pick(a.pool, 512, 128)
    if pool % 16:
        p.error("--pool must be a multiple of 16")
    try:
        run_peer(
            model=a.model,
            device=a.device,
            dtype=a.dtype,
            vllm_python=a.vllm_python,
            groups=a.groups,
            concurrency=a.concurrency,
            distinct_concurrency=a.distinct_concurrency,
            rounds=pick(a.rounds, 2, 1),
            seconds=pick(a.seconds, 20.0, 4.0),
            warmup=pick(a.warmup, 5.0, 1.0),
            pool=pool,
            seed=a.seed,
            threads=a.threads,
            max_length=a.max_length,
            check_items=a.check_items,
            contenders=tuple(c for c in CONTENDERS if c not in skip),
            reward_model_cells="rm" not in skip,
            judge="judge" not in skip,
            judge_model=a.judge_model,
            judge_groups=a.judge_groups,
            out=a.out or (DEFAULT_QUICK_OUT if a.quick else None),
            command=" ".join(["python -m bench peer", *(argv if argv is not None else sys.argv[2:])]),
        )
    except VllmMissing as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
