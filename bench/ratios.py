"""Ratios between the contenders and the targets they are checked against (bench/README.md)."""

from __future__ import annotations

import math

# targets (printed next to each ratio)
TARGET_SERVICE_OVER_LIMIT = 0.90
TARGET_SERVICE_OVER_NAIVE = 1.0
TARGET_SORTED_OVER_UNSORTED = 1.3
TARGET_ADDED_LATENCY_MS = 5.0
TARGET_RSS_GROWTH = 0.10


def _best(cells: list[dict]) -> dict | None:
    return max(cells, key=lambda c: c["items_per_s"]) if cells else None


def div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b == 0:
        return math.inf if a > 0 else None
    return a / b


def compute_ratios(res: dict) -> tuple[dict, list[dict]]:
    ratios: dict = {
        "service_over_limit": {},
        "service_over_naive": {},
        "sorted_over_unsorted": None,
        "added_latency_ms": None,
        "rss_ratio": None,
    }
    targets: list[dict] = []

    def target(name: str, value, op: str, goal: float, note: str = "") -> None:
        ok = None if value is None else (value >= goal if op == ">=" else value <= goal)
        targets.append({"check": name, "value": value, "target": f"{op} {goal:g}", "pass": ok, "note": note})

    limit = res.get("limit") or {}
    service = res.get("service") or {}
    naive = res.get("naive") or {}
    for w in res["meta"]["workloads"]:
        best = _best(service.get(w, []))
        lim = (limit.get("workloads") or {}).get(w)
        r = div(best["items_per_s"] if best else None, lim["items_per_s"] if lim else None)
        ratios["service_over_limit"][w] = {
            "ratio": r,
            "ratio_forward_only": div(
                best["items_per_s"] if best else None, lim["forward_items_per_s"] if lim else None
            ),
            "service_best_items_per_s": best["items_per_s"] if best else None,
            "service_best_cell": {"concurrency": best["concurrency"], "size": best["size"]} if best else None,
            "limit_items_per_s": lim["items_per_s"] if lim else None,
        }
        target(
            f"service / limit at saturation ({w})",
            r,
            ">=",
            TARGET_SERVICE_OVER_LIMIT,
            f"best cell c={best['concurrency']} s={best['size']}" if best else "",
        )
        per_c: dict = {}
        for c in res["meta"]["concurrency"]:
            cells = {}
            for s in res["meta"]["sizes"]:
                sv = next((x for x in service.get(w, []) if x["concurrency"] == c and x["size"] == s), None)
                nv = next((x for x in naive.get(w, []) if x["concurrency"] == c and x["size"] == s), None)
                if sv and nv:
                    cells[str(s)] = div(sv["items_per_s"], nv["items_per_s"])
            vals = [v for v in cells.values() if v is not None]
            worst = min(vals) if vals else None
            per_c[str(c)] = {"min_over_sizes": worst, "by_size": cells}
            worst_size = next((s for s, v in cells.items() if v == worst), None)
            target(
                f"service / naive, concurrency {c} ({w})",
                worst,
                ">=",
                TARGET_SERVICE_OVER_NAIVE,
                f"worst over sizes (size {worst_size})" if worst is not None else "",
            )
        ratios["service_over_naive"][w] = per_c
    # sorted vs unsorted (mixed lengths)
    uns = (res.get("unsorted") or {}).get("mixed", [])
    srt = service.get("mixed", [])
    bu, bs = _best(uns), _best(srt)
    r = div(bs["items_per_s"] if bs else None, bu["items_per_s"] if bu else None)
    by_cell = {}
    for x in srt:
        y = next((u for u in uns if u["concurrency"] == x["concurrency"] and u["size"] == x["size"]), None)
        if y:
            by_cell[f"c{x['concurrency']}_s{x['size']}"] = div(x["items_per_s"], y["items_per_s"])
    ratios["sorted_over_unsorted"] = {"ratio": r, "by_cell": by_cell}
    target("sorted / unsorted at saturation (mixed)", r, ">=", TARGET_SORTED_OVER_UNSORTED, "best cell of each")
    # what length-aware batch formation as a whole (sorting + padding cap) buys over plain FIFO batches
    fifo = (res.get("fifo") or {}).get("mixed", [])
    bf = _best(fifo)
    rf = div(bs["items_per_s"] if bs else None, bf["items_per_s"] if bf else None)
    ratios["length_aware_over_fifo"] = {"ratio": rf}
    target("sort + padding cap / FIFO batches (mixed)", rf, ">=", TARGET_SORTED_OVER_UNSORTED, "best cell of each")
    # added latency, 1 item, 1 client: per request, client latency − the server's own encode + forward
    # for that request (Server-Timing), p50 — paired, so a machine that drifts between phases does
    # not enter it; the difference of two p50s from different phases is kept for reference
    one = next((x for x in srt if x["concurrency"] == 1 and x["size"] == 1), None)
    bare = ((limit.get("workloads") or {}).get("mixed") or {}).get("single_item_ms")
    paired = (one.get("added_ms") or {}).get("p50") if one else None
    unpaired = one["latency_ms"]["p50"] - bare["p50"] if one and one["latency_ms"]["p50"] is not None and bare else None
    ratios["added_latency_ms"] = {
        "added_p50": paired,
        "service_p50": one["latency_ms"]["p50"] if one else None,
        "service_minus_limit_bare_p50": unpaired,
        "bare_p50": bare["p50"] if bare else None,
    }
    target(
        "added p50 latency, 1 item, 1 client (ms, mixed)",
        paired,
        "<=",
        TARGET_ADDED_LATENCY_MS,
        "latency − server encode+forward, per request",
    )
    mem = res.get("memory")
    rr = mem["ratio"] if mem else None
    ratios["rss_ratio"] = rr
    n1, n2 = (mem or {}).get("requests", res["meta"]["rss_requests"])
    target(f"RSS after {n2} / after {n1} requests", rr, "<=", 1 + TARGET_RSS_GROWTH)
    return ratios, targets
