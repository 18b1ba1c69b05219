"""The report: the printed table of a run, number formatting, strict JSON."""

from __future__ import annotations

import math

from .ratios import div


def fmt(x, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:,.{nd}f}"


def format_table(res: dict) -> str:
    """The table printed at the end of a run: limit, load cells, memory, checks."""
    m = res["meta"]
    th = m["threads"]
    lines = [
        f"rewardserve bench{' (quick)' if m['quick'] else ''} — {m['model']} — {m['machine']['cpu_count']} CPUs, "
        f"torch threads {th['REWARDSERVE_TORCH_THREADS']}, OMP_WAIT_POLICY {th['OMP_WAIT_POLICY']}, "
        f"uvicorn workers {th['uvicorn_workers']}, "
        f"load avg at start {m['machine']['loadavg_start']}",
        f"cells: {m['seconds']:g} s measured after {m['warmup']:g} s warm-up; pool {m['pool']} items, seed {m['seed']}",
    ]
    lines += _limit_lines(res.get("limit"))
    lines += _load_lines(res)
    lines += _memory_lines(res.get("memory"))
    lines.append("")
    lines.append(f"  {'check':52s} {'value':>9s} {'target':>8s}  pass")
    for t in res["targets"]:
        ok = "skip" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"  {t['check']:52s} {fmt(t['value'], 2):>9s} {t['target']:>8s}  {ok}  {t['note']}")
    lines.append(f"\nwall time {res['meta']['wall_seconds']:.0f} s; JSON: {res['meta']['out']}")
    return "\n".join(lines)


def _limit_lines(limit: dict | None) -> list[str]:
    if not limit:
        return []
    lines = [
        "",
        "limit (in-process, no HTTP, ideal length-sorted batches; tokenization counted separately)",
        f"  {'workload':9s} {'tok/item':>8s} {'encode it/s':>11s} {'forward it/s':>12s} {'budget':>7s} "
        f"{'workers':>9s} {'limit it/s':>10s} {'limit tok/s':>11s} {'tok share':>9s} {'1-item p50 ms':>13s}",
    ]
    for w, x in limit["workloads"].items():
        lay_s = f"{x['best_layout']['workers']}x{x['best_layout']['threads_per_worker']}t"
        lines.append(
            f"  {w:9s} {x['tokens']['mean']:8.1f} {fmt(x['encode']['items_per_s']):>11s} "
            f"{fmt(x['forward_items_per_s']):>12s} {x['best_budget']:>7d} {lay_s:>9s} "
            f"{fmt(x['items_per_s']):>10s} {fmt(x['tokens_per_s'], 0):>11s} {x['tokenization_share']:>9.0%} "
            f"{fmt(x['single_item_ms']['p50'], 2):>13s}"
        )
    return lines


def _cell(cells: list[dict], c: int, s: int) -> dict | None:
    return next((x for x in cells if x["concurrency"] == c and x["size"] == s), None)


def _load_lines(res: dict) -> list[str]:
    m = res["meta"]
    service, naive, uns, fifo = (res.get(n) or {} for n in ("service", "naive", "unsorted", "fifo"))
    if not (service or naive or uns or fifo):
        return []
    lines = [
        "",
        "closed-loop HTTP load (items/s; latency ms p50/p90/p99; 503 = rejected requests)",
        f"  {'workload':8s} {'conc':>4s} {'size':>4s} | {'service':>9s} {'tok/s':>9s} {'p50':>7s} {'p90':>7s} "
        f"{'p99':>7s} {'503':>4s} | {'naive':>9s} {'p50':>7s} {'p99':>7s} | {'unsorted':>9s} {'fifo':>7s} "
        f"| {'svc/naive':>9s}",
    ]
    for w in m["workloads"]:
        for s in m["sizes"]:
            for c in m["concurrency"]:
                sv, nv, uv, fv = (_cell(d.get(w, []), c, s) for d in (service, naive, uns, fifo))
                sk = _cell(m.get("skipped_cells", {}).get(w, []), c, s)
                if sk:
                    lines.append(
                        f"  {w:8s} {c:>4d} {s:>4d} | skipped: one round of {c * s} items takes "
                        f"{sk['round_seconds_at_limit']:.0f} s at the limit rate (> {m['max_round_seconds']:g} s)"
                    )
                    continue
                lat = sv["latency_ms"] if sv else {}
                nl = nv["latency_ms"] if nv else {}
                rejected = (sv["rejected_503"] + sv["rejected_429"]) if sv else "-"
                row = (
                    f"  {w:8s} {c:>4d} {s:>4d} | {fmt(sv and sv['items_per_s']):>9s} "
                    f"{fmt(sv and sv['tokens_per_s'], 0):>9s} "
                    f"{fmt(lat.get('p50')):>7s} {fmt(lat.get('p90')):>7s} {fmt(lat.get('p99')):>7s} "
                    f"{rejected:>4} | {fmt(nv and nv['items_per_s']):>9s} "
                    f"{fmt(nl.get('p50')):>7s} {fmt(nl.get('p99')):>7s} | {fmt(uv and uv['items_per_s']):>9s} "
                    f"{fmt(fv and fv['items_per_s']):>7s} | "
                    f"{fmt(div(sv['items_per_s'], nv['items_per_s']) if sv and nv else None, 2):>9s}"
                )
                flags = [
                    f"{n}: not steady"
                    for n, x in (("service", sv), ("naive", nv), ("unsorted", uv), ("fifo", fv))
                    if x and not x["steady"]
                ]
                lines.append(row + (f"  ({'; '.join(flags)})" if flags else ""))
    return lines


def _memory_lines(mem: dict | None) -> list[str]:
    if not mem:
        return []
    (n1, r1), (n2, r2) = mem["rss_mb_after"].items()
    return [
        "",
        f"memory: service RSS {fmt(mem['rss_mb_start'])} MB at start, {fmt(r1)} MB after {n1} requests, "
        f"{fmt(r2)} MB after {n2} (ratio {fmt(mem['ratio'], 3)}; {mem['concurrency']} clients, "
        "1 short item each)",
    ]


def json_safe(x):
    """Strict JSON: a non-finite ratio (e.g. the naive server answered nothing) is written as a string."""
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
