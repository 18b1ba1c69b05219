"""``rewardserve calibrate``: per-prompt reference rewards from base-policy samples.

For each prompt: sample K responses from the base policy (batched generation), score them through
the running service (one request scores every model), and store per model the Q-quantile of the
raw rewards (``lsc.quantile``: linear interpolation). Per model, a default reference — the
Q-quantile over every calibration sample — is stored too; the service uses it for prompts with no
reference of their own (models whose ``missing_reference`` policy is ``default``).

Resumable: a prompt whose stored reference already has the same (policy, K, Q, model revision) is
skipped. Every sample's raw rewards are appended to a JSON Lines log, so the default reference
covers the samples of earlier runs too.

With ``reference_response`` instead of a policy: r_ref(x) = r(x, reference_response).

Everything is stored into one reference set (``reference_set``, default ``default``): one set per
base policy, so two calibrations into two sets do not touch each other.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from rewardclient import RewardClient, prompt_fingerprint
from rewardclient.protocol import DEFAULT_QUANTILE
from rewardserve import lsc

from .datasets import load_prompts

DEFAULT_LOG_DIR = Path("~/.cache/rewardserve/calibration").expanduser()


@dataclass
class CalibrationConfig:
    """The settings of one calibration (also the options of ``rewardserve calibrate``)."""

    prompts: str = field(
        metadata={"description": "prompts.jsonl(.gz) (objects with 'prompt') or JSON Lines of strings"}
    )
    url: str = field(default="http://127.0.0.1:8000", metadata={"description": "the running service"})
    policy: str | None = field(
        default=None,
        metadata={"description": "base policy: folder, hub id or .gguf file (default: SmolLM2-135M-Instruct)"},
    )
    samples: int = field(default=8, metadata={"description": "K: base-policy samples per prompt"})
    quantile: float = field(
        default=DEFAULT_QUANTILE,
        metadata={"description": "Q: the reference is the Q-quantile of the K samples' rewards"},
    )
    models: list[str] | None = field(
        default=None, metadata={"description": "models to calibrate (default: all served)"}
    )
    temperature: float = field(default=0.7, metadata={"description": "sampling temperature of the base policy"})
    top_p: float = field(default=0.9, metadata={"description": "nucleus sampling: the top-p of the base policy"})
    max_new_tokens: int = field(default=96, metadata={"description": "longest sampled response, in policy tokens"})
    batch_prompts: int = field(default=4, metadata={"description": "prompts per generate call"})
    seed: int = field(default=0, metadata={"description": "sampling seed"})
    split: str | None = field(
        default=None, metadata={"description": "only prompts of this split (train/test) when the file has one"}
    )
    limit: int | None = field(default=None, metadata={"description": "only the first N prompts"})
    reference_response: str | None = field(
        default=None, metadata={"description": "instead of sampling: r_ref(x) = r(x, this text), e.g. a refusal"}
    )
    log: str | None = field(
        default=None,
        metadata={
            "description": "JSON Lines log of every sample's rewards (default: under ~/.cache/rewardserve/calibration)"
        },
    )
    api_key: str | None = field(
        default=None, metadata={"description": "API key of the service (default: $REWARDSERVE_API_KEY)"}
    )
    device: str = field(default="cpu", metadata={"description": "where the base policy generates: cpu, cuda, cuda:N"})
    reference_set: str = field(
        default="default", metadata={"description": "the reference set to store into: one set per base policy"}
    )


@dataclass
class CalibrationReport:
    prompts: int = 0
    skipped: int = 0
    calibrated: int = 0
    samples: int = 0
    generation_seconds: float = 0.0
    scoring_seconds: float = 0.0
    wall_seconds: float = 0.0
    defaults: dict[str, float] = field(default_factory=dict)
    log: str = ""

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.wall_seconds if self.wall_seconds else 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "samples_per_second": self.samples_per_second}


def _log_path(cfg: CalibrationConfig, policy: str) -> Path:
    if cfg.log:
        return Path(cfg.log).expanduser()
    ident = f"{cfg.url}|{policy}|{cfg.samples}|{cfg.quantile}" + (
        f"|{cfg.reference_set}" if cfg.reference_set != "default" else ""
    )
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return DEFAULT_LOG_DIR / f"{key}.jsonl"


def _is_current(entry: dict | None, policy: str, k: int, q: float | None, revision: str) -> bool:
    if not entry:
        return False
    return (
        entry.get("policy") == policy
        and entry.get("n_samples") == k
        and entry.get("quantile") == q
        and entry.get("revision") == revision
    )


def calibrate(cfg: CalibrationConfig) -> CalibrationReport:
    from rewardserve.references import check_set_name

    from .policy import policy_id

    check_set_name(cfg.reference_set)  # a clear error before any generation
    t0 = time.perf_counter()
    report = CalibrationReport()
    prompts = load_prompts(cfg.prompts, split=cfg.split, limit=cfg.limit)
    report.prompts = len(prompts)
    if cfg.reference_response is not None:
        policy = "reference-response:" + hashlib.sha256(cfg.reference_response.encode()).hexdigest()[:12]
        k = 1
    else:
        policy = policy_id(cfg.policy)
        k = cfg.samples
    q = cfg.quantile
    log_path = _log_path(cfg, policy)
    report.log = str(log_path)
    with RewardClient(cfg.url, api_key=cfg.api_key) as rc:
        served = {m["name"]: m for m in rc.models()}
        models = cfg.models or list(served)
        unknown = [m for m in models if m not in served]
        if unknown:
            raise ValueError(f"the service at {cfg.url} does not serve {unknown}; it serves {list(served)}")
        revisions = {m: served[m]["revision"] for m in models}
        fps = [prompt_fingerprint(p) for p in prompts]
        todo = set()
        for m in models:
            stored = rc.lookup_references(m, fps, reference_set=cfg.reference_set)["references"] if fps else {}
            todo |= {
                i
                for i, fp in enumerate(fps)
                if not _is_current(stored.get(fp), policy, k, q if k > 1 else None, revisions[m])
            }
        order = sorted(todo)
        report.skipped = len(prompts) - len(order)

        if order and cfg.reference_response is None:
            import torch

            from .policy import generate, load_policy

            torch.manual_seed(cfg.seed)
            model, tok = load_policy(cfg.policy, device=cfg.device)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(order), desc="calibrating", unit="prompt")
        with open(log_path, "a", encoding="utf-8") as log:
            for s in range(0, len(order), cfg.batch_prompts):
                idx = order[s : s + cfg.batch_prompts]
                batch = [prompts[i] for i in idx]
                g0 = time.perf_counter()
                if cfg.reference_response is None:
                    samples = generate(model, tok, batch, k, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
                else:
                    samples = [[cfg.reference_response] for _ in batch]
                g1 = time.perf_counter()
                # only raw rewards matter here: an inline reference keeps models whose missing-reference
                # policy is 'error' from refusing prompts that are not calibrated yet
                zero = dict.fromkeys(models, 0.0)
                items = [{"prompt": p, "response": r, "reference": zero} for p, ss in zip(batch, samples) for r in ss]
                results = rc.score(items, models=models)
                report.scoring_seconds += time.perf_counter() - g1
                report.generation_seconds += g1 - g0
                per_model: dict[str, list[tuple]] = {m: [] for m in models}
                for j, (i, p) in enumerate(zip(idx, batch)):
                    rows = results[j * k : (j + 1) * k]
                    raws = {m: [r.raw[m] for r in rows] for m in models}
                    for m in models:
                        value = lsc.quantile(raws[m], q) if k > 1 else raws[m][0]
                        per_model[m].append((p, value))
                    log.write(
                        json.dumps(
                            {
                                "fingerprint": fps[i],
                                "policy": policy,
                                "k": k,
                                "quantile": q,
                                "revisions": revisions,
                                "raw": raws,
                            }
                        )
                        + "\n"
                    )
                for m in models:
                    rc.put_references(
                        m,
                        per_model[m],
                        quantile=q if k > 1 else None,
                        policy=policy,
                        n_samples=k,
                        reference_set=cfg.reference_set,
                    )
                log.flush()
                report.samples += len(items)
                report.calibrated += len(idx)
                bar.update(len(idx))
                bar.set_postfix(samples_per_s=f"{report.samples / (time.perf_counter() - t0):.2f}")
        bar.close()

        # the default reference per model: the quantile over every logged sample of this policy/K/Q and revision
        pooled: dict[str, list[float]] = {m: [] for m in models}
        with open(log_path, encoding="utf-8") as log:
            for line in log:
                row = json.loads(line)
                for m in models:
                    if row["revisions"].get(m) == revisions[m] and m in row["raw"]:
                        pooled[m].extend(row["raw"][m])
        for m in models:
            if pooled[m]:
                report.defaults[m] = lsc.quantile(pooled[m], q)
                rc.put_references(
                    m,
                    quantile=q,
                    policy=policy,
                    default=report.defaults[m],
                    n_samples=len(pooled[m]),
                    reference_set=cfg.reference_set,
                )
    report.wall_seconds = time.perf_counter() - t0
    return report
