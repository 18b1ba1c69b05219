"""What padding costs: one padded forward of n random items vs the same items one by one
(``python -m bench.padding``). The measurement behind the per-device default of
``batching.max_padding_ratio`` (docs/configuration.md).

For each group size, ``--groups`` random groups of the mixed workload are timed both ways,
interleaved (so a noisy machine slows both alike); printed per size: the median time ratio
(batch ÷ one by one) for groups under and over the padding threshold.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from .stats import emit_json
from .workload import generate, spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.padding", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--sizes", default="2,4,8")
    p.add_argument("--groups", type=int, default=25)
    p.add_argument("--threshold", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    from rewardserve.backends import build_backend
    from rewardserve.config import load_settings

    settings = load_settings(a.config)
    name, cfg = next(iter(settings.backbones.items()))
    backend = build_backend(name, cfg, settings)
    backend.warmup()
    encs = [backend.encode(it["prompt"], it["response"]) for it in generate(spec("mixed"), 256, a.seed)]
    rng = random.Random(a.seed)
    rows: dict[int, list[tuple[float, float]]] = {}
    for _ in range(a.groups):
        for n in (int(x) for x in a.sizes.split(",")):
            group = rng.sample(encs, n)
            t0 = time.perf_counter()
            backend.forward(group)
            t_batch = time.perf_counter() - t0
            t0 = time.perf_counter()
            for e in group:
                backend.forward([e])
            t_one = time.perf_counter() - t0
            pad = 1 - sum(e.length for e in group) / (n * max(e.length for e in group))
            rows.setdefault(n, []).append((t_batch / t_one, pad))
    out = {"backbone": name, "device": str(backend.device), "threshold": a.threshold, "groups": a.groups, "sizes": {}}
    for n, v in rows.items():
        under = [r for r, pad in v if pad < a.threshold]
        over = [r for r, pad in v if pad >= a.threshold]
        out["sizes"][str(n)] = {
            "median_ratio": statistics.median(r for r, _ in v),
            "mean_padding": statistics.mean(pad for _, pad in v),
            "under": {"groups": len(under), "median_ratio": statistics.median(under) if under else None},
            "over": {"groups": len(over), "median_ratio": statistics.median(over) if over else None},
        }
    emit_json(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
