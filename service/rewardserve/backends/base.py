"""What every reward-model backend provides: encode (tokenize + truncate) and forward (scalars)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rewardclient.protocol import Prompt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class Encoded:
    """One tokenized (prompt, response) pair, ready for a batch."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None
    # per token: 0 prompt, 1 response, -1 special token (used by pooling heads)
    segments: list[int] | None = None
    truncated: bool = False
    # leading tokens that items of the same prompt share (a decoder's prompt, < length); 0: none
    prefix_len: int = 0
    # characters of the response as sent (before truncation): a head's length correction reads it
    response_chars: int = 0

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass
class ModelInfo:
    name: str
    kind: str
    source: str
    revision: str
    extra: dict[str, Any] = field(default_factory=dict)


def padded_width(lengths: list[int], multiple: int = 1, limit: int | None = None) -> int:
    """The width a batch of items with these lengths is padded to: the longest, rounded up to a
    multiple of ``multiple`` when the batch has several items (fewer distinct tensor shapes), but
    never past ``limit`` (the longest input the model takes). A lone item is never padded."""
    width = max(lengths)
    if len(lengths) < 2 or multiple <= 1:
        return width
    w = -(-width // multiple) * multiple
    return w if limit is None else max(width, min(w, limit))


def collate(
    batch: list[Encoded], pad_id: int, device: torch.device, width: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a batch into tensors (input_ids, attention_mask, token_type_ids, segments), ``width``
    tokens wide (default: the longest item)."""
    n, width = len(batch), width or max(e.length for e in batch)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    has_tt = batch[0].token_type_ids is not None
    tt = torch.zeros((n, width), dtype=torch.long) if has_tt else None
    has_seg = batch[0].segments is not None
    seg = torch.full((n, width), -1, dtype=torch.long) if has_seg else None
    for i, e in enumerate(batch):
        L = e.length
        ids[i, :L] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, :L] = 1
        if tt is not None:
            tt[i, :L] = torch.tensor(e.token_type_ids, dtype=torch.long)
        if seg is not None:
            seg[i, :L] = torch.tensor(e.segments, dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if tt is not None:
        out["token_type_ids"] = tt
    if seg is not None:
        out["segments"] = seg
    return {k: v.to(device) for k, v in out.items()}


def file_digest(*paths: str | Path, length: int = 12) -> str:
    """Short sha256 over the bytes of the given files (a model revision)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:length]


def weights_digest(folder: str | Path) -> str:
    """Revision of a local model folder: sha256 over its safetensors weights and config.json."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) + [p for p in [folder / "config.json"] if p.exists()]
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    return file_digest(*files)


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
    return torch.device(device)


def intraop_threads(n: int) -> None:
    """Set the calling thread's torch intra-op threads (CPU). With torch's OpenMP backend the count
    is per calling thread, so forward workers can each run with their own."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class Backend(ABC):
    """A loaded network that scores (prompt, response) pairs for one or more reward models.

    ``encode`` runs on any thread (tokenizers are thread-safe for reading); ``forward`` runs on the
    backbone's forward workers (possibly several at once: it must not mutate shared state), under
    ``torch.inference_mode``.
    """

    name: str
    device: torch.device
    dtype: torch.dtype
    max_length: int
    # batches are padded to a multiple of this many tokens (fewer distinct tensor shapes)
    pad_multiple: int = 1
    # items with the same prompt prefix run it once (``Encoded.prefix_len``; decoder models)
    shares_prefix: bool = False

    def batch_width(self, batch: list[Encoded]) -> int:
        """The width this backend pads ``batch`` to (see ``padded_width``)."""
        return padded_width([e.length for e in batch], self.pad_multiple, self.max_length)

    @property
    @abstractmethod
    def model_names(self) -> list[str]:
        """The reward models this backbone computes, in the column order of ``forward``."""

    @abstractmethod
    def model_info(self) -> dict[str, ModelInfo]: ...

    @abstractmethod
    def encode(self, prompt: Prompt, response: str) -> Encoded: ...

    @abstractmethod
    def forward(self, batch: list[Encoded]) -> np.ndarray:
        """Raw rewards, float64 array of shape (len(batch), len(model_names))."""

    def warmup(self) -> None:
        self.forward([self.encode("Hello", "Hi! How can I help you today?")])
