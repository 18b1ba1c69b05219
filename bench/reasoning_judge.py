"""python -m bench.reasoning_judge: the cost of the optional judge of examples/reasoning.yaml
(SmolLM2-135M-Instruct, one question) on the reasoning demo's 18 items: seconds per request with and
without the judge model, interleaved, after a warmup; and its mean P(Yes) per answer style (mechanics only:
as a judge this model is near chance)."""

from __future__ import annotations

import math
import pathlib
import statistics
import tempfile
import time

import yaml

from rewardclient import RewardClient
from rewardlab.demo_reasoning import arithmetic_items, example_config_path
from rewardlab.policy import resolve_policy_path
from rewardserve.service_process import ServiceProcess


def main() -> None:
    cfg = yaml.safe_load(example_config_path().read_text())
    base = str(example_config_path().parent)
    for m in cfg["backbones"]["minilm"]["models"].values():
        m["head"] = str(pathlib.Path(base, m["head"]).resolve())
    cfg["backbones"]["judge"] = {
        "kind": "judge",
        "path": resolve_policy_path(None),  # SmolLM2-135M-Instruct, converted once from the GGUF
        "max_length": 512,
        "models": {"polite": {"question": "Is the reply polite and respectful?"}},
    }
    d = pathlib.Path(tempfile.mkdtemp())
    p = d / "r.yaml"
    p.write_text(yaml.safe_dump(cfg))
    items = arithmetic_items(6)
    four = ["correct", "formatted", "helpful", "harmless"]
    t = {"without": [], "with": []}
    with ServiceProcess(config=str(p)) as svc, RewardClient(svc.url) as rc:
        rc.score(items, models=four + ["polite"])
        for _ in range(3):
            for k, ms in (("without", four), ("with", four + ["polite"])):
                t0 = time.perf_counter()
                res = rc.score(items, models=ms)
                t[k].append(time.perf_counter() - t0)
        res = rc.score(items, models=["polite"])
    for k, v in t.items():
        print(k, f"median {statistics.median(v):.2f} s (min {min(v):.2f}, max {max(v):.2f}) for {len(items)} items")
    for style in ("right but rude", "wrong but polite", "right and polite"):
        ps = [math.exp(r.transformed["polite"]) for r, it in zip(res, items) if it["id"].endswith(style)]
        print(style, "mean P(Yes)", round(sum(ps) / len(ps), 3))


if __name__ == "__main__":
    main()
