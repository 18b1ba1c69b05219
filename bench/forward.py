"""Forward throughput of two configs' backbones on the same texts: ``python -m bench.forward OLD NEW``.

Encodes 96 AlpacaEval test pairs' chosen replies once per backbone, then times batches of 16 through
each backbone's ``forward`` in interleaved rounds (so load on the machine hits both alike) and prints
the per-round times and new/old throughput from the fastest round of each. A model change that keeps
the architecture (an encoder delta, new heads) should give about 1.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

from rewardserve.backends import build_backend
from rewardserve.config import load_settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__.split("\n")[0])
    ap.add_argument("old", help="YAML config of the baseline (one backbone)")
    ap.add_argument("new", help="YAML config to compare (one backbone)")
    ap.add_argument("--pairs", default="../shared/data/alpaca-helpful.test.jsonl.gz")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    with gzip.open(a.pairs, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(a.n), f)]
    backends = {}
    for name, path in (("old", a.old), ("new", a.new)):
        settings = load_settings(path)
        ((bname, cfg),) = settings.backbones.items()
        backends[name] = build_backend(bname, cfg, settings)
    encoded = {k: [b.encode(r["prompt"], r["chosen"]) for r in rows] for k, b in backends.items()}
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(a.rounds):
        for k, b in backends.items():
            t0 = time.perf_counter()
            for i in range(0, len(rows), a.batch):
                b.forward(encoded[k][i : i + a.batch])
            times[k].append(time.perf_counter() - t0)
    print(json.dumps({"seconds": times, "throughput_new_over_old": min(times["old"]) / min(times["new"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
