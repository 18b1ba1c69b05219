"""What every reward-model backend provides: encode (tokenize + truncate) and forward (scalars)."""

from __future__ import annotations

import hashlib
import json
import os
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


def digest_cache_path() -> Path:
    """Where revision digests are remembered: ``$REWARDSERVE_DIGEST_CACHE``, else
    ``$XDG_CACHE_HOME/rewardserve/digests.json`` (``~/.cache`` by default)."""
    env = os.environ.get("REWARDSERVE_DIGEST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rewardserve" / "digests.json"


def _hub_commit(folder: Path) -> str | None:
    """The commit of a Hugging Face hub cache snapshot (``…/snapshots/<40 hex>/``): already a revision."""
    resolved = folder.resolve()
    name = resolved.name
    if resolved.parent.name == "snapshots" and len(name) == 40 and all(c in "0123456789abcdef" for c in name):
        return name
    return None


def weights_digest(folder: str | Path) -> str:
    """Revision of a local model folder: sha256 over its safetensors weights and config.json (12 hex
    digits; the same bytes give the same revision on every machine).

    Hashing an 8B model reads 16 GB, so a digest is computed once per set of files and remembered
    (``digest_cache_path``) under the files' (path, size, mtime, inode): a later start with the same
    files reads no weights. A hub cache snapshot folder is named by its commit, which is used as is
    (``hub-<12 hex>``). A cache that cannot be written (a read-only file system) only costs the hash."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) + [p for p in [folder / "config.json"] if p.exists()]
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    commit = _hub_commit(folder)
    if commit is not None:
        return f"hub-{commit[:12]}"
    stats = [(str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino) for p in files for st in [p.stat()]]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    cache = digest_cache_path()
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), str):
        return str(known[key])
    digest = file_digest(*files)
    known[key] = digest
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        tmp.replace(cache)
    except OSError:
        pass
    return digest


def enable_tf32(device: torch.device) -> None:
    """On cuda, float32 matmuls and convolutions run on TF32 tensor cores (bf16/fp16 models are not
    affected; a float32 model gets ~10 mantissa bits in its matmuls instead of 23)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def load_to_device(
    path: str,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """``AutoModelForSequenceClassification`` loaded straight onto ``device`` in ``dtype``: the
    weights go from the safetensors files to the device tensor by tensor (``device_map``, low-memory
    loading), never all staged in host memory first. ``attn_implementation``: ``sdpa`` by default;
    a flash-attention one must be installed (and runs without prefix sharing: it takes no 4D mask)."""
    from transformers import AutoModelForSequenceClassification

    attn = attn_implementation or "sdpa"
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {attn!r}")
    if attn.startswith("flash_attention"):
        import importlib.util

        module = "flash_attn" if attn == "flash_attention_2" else "flash_attn_interface"
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"attn_implementation {attn!r} needs the {module} package, which is not installed")
        if device.type != "cuda":
            raise ValueError(f"attn_implementation {attn!r} runs on cuda only, not on {device}")
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        revision=revision,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        device_map={"": device},
        low_cpu_mem_usage=True,
        attn_implementation=attn,
    )
    return model.eval()


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
    # what a token costs a forward in memory (``cost.CostModel``); None: padded tokens
    cost_model: Any = None

    def batch_width(self, batch: list[Encoded]) -> int:
        """The width this backend pads ``batch`` to (see ``padded_width``)."""
        return padded_width([e.length for e in batch], self.pad_multiple, self.max_length)

    def batch_cost(self, batch: list[Encoded]) -> int:
        """What ``forward(batch)`` holds at its peak, in tokens (the batcher's budget,
        ``max_batch_tokens``): here its padded tokens; backends with a cache or a costlier
        attention count those too."""
        return len(batch) * self.batch_width(batch) if batch else 0

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
