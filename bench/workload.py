"""Reproducible synthetic workloads: (prompt, response) pairs with word counts from a stated distribution.

Words come from a fixed vocabulary (``VOCABULARY``) with a seeded ``random.Random``, so the same
(spec, n, seed) gives byte-identical text on every machine and Python version. Lengths are in
words, drawn uniformly (inclusive) per item; the token count depends on the model's tokenizer and
is measured by the benchmark, not assumed.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass

# ~250 plain English words (a fixed list written for this benchmark; order matters for reproducibility)
VOCABULARY: tuple[str, ...] = tuple(
    """
the a an and or but if then so because while when where what which who how why this that these those
it they we you he she i me us them my your our their its his her one two three four five six seven
eight nine ten first second last next many few more most some any every each other same different
good better best bad worse small large long short high low new old early late easy hard simple clear
quick slow safe careful honest helpful useful wrong right true false possible likely open close
is are was were be been being have has had do does did can could will would should may might must
make take give get go come see look find think know want need use try help ask tell say explain
answer question problem reason example step plan idea result method system model data file
code test value number list table word text line page book note letter message email report
water food egg bread rice apple coffee tea milk salt sugar kitchen pot pan oven fire heat cold
dog cat bird fish horse garden tree flower river lake sea mountain road city town house room door
window car bus train bike ship plane map time day week month year hour minute morning evening night
money price cost market work job team office school class student teacher doctor friend family
please thanks sorry hello yes no not very also just only still again always never often sometimes
about above after before between during into from with without under over through around against
""".split()
)

# The workloads of the benchmark (words per item, uniform and inclusive)
WORKLOADS: dict[str, WorkloadSpec] = {}


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    prompt_words: tuple[int, int]
    response_words: tuple[int, int]
    description: str = ""
    group: int = 1  # consecutive items that share one prompt (GRPO's G responses per prompt)

    def to_dict(self) -> dict:
        return asdict(self)


for _spec in (
    WorkloadSpec("mixed", (5, 60), (5, 150), "prompt 5-60 words, response 5-150 words, uniform per item"),
    WorkloadSpec("uniform", (30, 30), (80, 80), "every prompt 30 words, every response 80 words"),
    # short single-item requests for the memory phase (many requests, little compute per request)
    WorkloadSpec("short", (1, 4), (1, 8), "prompt 1-4 words, response 1-8 words (memory phase)"),
    # group-based RL (``python -m bench grpo``): G responses per prompt, about 50-400 prompt tokens and
    # 20-200 response tokens with SmolLM2's tokenizer and chat template
    *(
        WorkloadSpec(
            f"grpo{g}",
            (40, 340),
            (17, 175),
            f"G={g} responses per prompt: prompt 40-340 words, response 17-175 words",
            group=g,
        )
        for g in (1, 4, 8, 16)
    ),
):
    WORKLOADS[_spec.name] = _spec


def spec(name: str) -> WorkloadSpec:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None


def _text(rng: random.Random, n_words: int) -> str:
    words = [VOCABULARY[rng.randrange(len(VOCABULARY))] for _ in range(n_words)]
    return " ".join(words)


def generate(workload: WorkloadSpec | str, n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` items ``{"prompt": str, "response": str}``; the same arguments give the same items."""
    ws = spec(workload) if isinstance(workload, str) else workload
    # a per-workload stream (crc32, not hash(): str hashes are salted per process)
    rng = random.Random(seed * 1_000_003 + zlib.crc32(ws.name.encode()))
    items = []
    if ws.group > 1:  # groups of consecutive items with one prompt
        while len(items) < n:
            prompt = _text(rng, rng.randint(*ws.prompt_words))
            items += [
                {"prompt": prompt, "response": _text(rng, rng.randint(*ws.response_words))} for _ in range(ws.group)
            ]
        return items[:n]
    for _ in range(n):
        np_ = rng.randint(*ws.prompt_words)
        nr = rng.randint(*ws.response_words)
        items.append({"prompt": _text(rng, np_), "response": _text(rng, nr)})
    return items
