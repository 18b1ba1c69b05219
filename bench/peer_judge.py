"""The judge cells of ``python -m bench peer``: a yes/no LLM judge served by rewardserve and by vLLM.

rewardserve runs a ``kind: judge`` backbone (one question, its default template and yes/no
spellings) on a causal LM — by default the converted SmolLM2-135M-Instruct policy the lab uses
(``rewardlab.policy.resolve_policy_path``, from the GGUF shipped with the project: nothing from a
hub). Its raw reward is ``logsumexp(log p(yes ids)) − logsumexp(log p(no ids))`` of the next token
after the rendered judge prompt (docs/judges.md).

vLLM serves the same causal LM with its **generate runner** (``--runner generate``, its defaults
otherwise: automatic prefix caching, chunked prefill) and is asked, per item, for one greedy token on
the **token ids the service renders** (chat template, judge turn, generation prompt, truncation),
with ``logprob_token_ids`` = the service's yes and no ids: vLLM returns their raw full-vocabulary
log-probs (computed from the logits before any sampling step; ``bench.peer_load.judge_body``), and
the same logsumexp difference is taken client side. Why this request and not top-k ``logprobs`` or
``allowed_token_ids``: bench/README.md, "Against vLLM", the judge cell.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

JUDGE_MODEL = "judge"  # the judge model's name in the service's config
QUESTION = "Is the reply helpful and correct?"
JUDGE_CELL_OFFSET = 100  # judge cells' items: a seed range of their own (cell_seed's k)


def judge_model_path(model: str | Path | None = None) -> Path:
    """The judge's causal LM: ``model`` or the converted SmolLM2-135M-Instruct policy (offline)."""
    if model:
        return Path(model)
    from rewardlab.policy import resolve_policy_path

    return Path(resolve_policy_path(None))


def write_judge_config(model: str | Path, work: Path, device: str, dtype: str, max_length: int) -> Path:
    """The service's config: one judge backbone with one question, every other setting its default
    (prompt-prefix sharing on where the model supports it)."""
    import yaml

    bb = {
        "kind": "judge",
        "path": str(model),
        "device": device,
        "dtype": dtype,
        "max_length": max_length,
        "models": {JUDGE_MODEL: {"question": QUESTION}},
    }
    path = work / "judge.yaml"
    path.write_text(yaml.safe_dump({"backbones": {"judge": bb}}, sort_keys=False))
    return path


def judge_encoder(model: str | Path, max_length: int) -> Any:
    """The service's own judge backend for the model: the ids vLLM is sent, and the yes/no ids."""
    from rewardserve.backends.judge import JudgeBackend, JudgeModelConfig

    return JudgeBackend(
        "judge", models={JUDGE_MODEL: JudgeModelConfig(question=QUESTION)}, path=str(model), max_length=max_length
    )


def label_ids(be: Any) -> tuple[list[int], list[int]]:
    """The yes and no token ids the service's judge sums (its single-token spellings)."""
    q = be.questions[0]
    return list(q.yes.values()), list(q.no.values())


def encode_judge_items(be: Any, items: list[dict]) -> tuple[list[list[int]], dict]:
    """The full input ids of each item's judge sequence (the one question), and the pool's token
    statistics (mean tokens, the share before the response that a GRPO group shares)."""
    ids, prompt = [], 0
    for it in items:
        e = be.encode(it["prompt"], it["response"])
        ids.append(list(e.input_ids) + list(e.tails[0]))
        prompt += e.prefix_len
    total = sum(len(x) for x in ids)
    return ids, {"mean_tokens": total / len(ids), "prompt_share": prompt / total, "items": len(ids)}


def score_vllm_judge(
    url: str, groups: list[list[list[int]]], yes: list[int], no: list[int], timeout: float = 600.0
) -> tuple[list[float], int]:
    """The judge's raw rewards from vLLM's ``/v1/completions`` (one request per group) and its
    prompt tokens."""
    import httpx

    from .peer_load import judge_body, judge_rewards
    from .peer_vllm import SERVED_NAME

    out: list[float] = []
    tokens = 0
    with httpx.Client(base_url=url, timeout=timeout) as c:
        for g in groups:
            r = c.post("/v1/completions", json=judge_body(SERVED_NAME, g, yes, no))
            if r.status_code != 200:
                raise RuntimeError(f"vLLM /v1/completions answered {r.status_code}: {r.text[:2000]}")
            body = r.json()
            out += judge_rewards(body, yes, no)
            tokens += int(body["usage"]["prompt_tokens"])
    return out, tokens


def check_judge_rewards(
    servers: dict[str, Any], be: Any, sizes: list[int], n_items: int, seed: int, tolerance: float
) -> dict:
    """The same groups (items never used by the load) to every judge contender, compared item by item."""
    from .peer import CHECK_SEED_OFFSET, compare_rewards, reward_check, score_rewardserve
    from .workload import generate

    yes, no = label_ids(be)
    rewards: dict[str, list[float]] = {n: [] for n in servers}
    tokens: dict[str, int] = dict.fromkeys(servers, 0)
    per_g = {}
    for g in sizes:
        n = max(g, n_items - n_items % g)
        items = generate(f"grpo{g}", n, seed + CHECK_SEED_OFFSET + 7)
        ids, _ = encode_judge_items(be, items)
        got = {}
        for name, s in servers.items():
            if s.kind == "vllm":
                r, t = score_vllm_judge(s.url, [ids[k : k + g] for k in range(0, n, g)], yes, no)
            else:
                r, t = score_rewardserve(s.url, [items[k : k + g] for k in range(0, n, g)], model=JUDGE_MODEL)
            if any(not math.isfinite(x) for x in r):
                raise RuntimeError(f"{name}: a judge reward is not finite: {r}")
            got[name] = r
            rewards[name] += r
            tokens[name] += t
        per_g[str(g)] = compare_rewards(got, tolerance)
    return reward_check(rewards, tokens, per_g, tolerance)
