"""The settings of head training (``TrainConfig``), apart from the training code so that reading them
(``rewardserve train-head --help``) imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DEFAULT_CACHE = Path("~/.cache/rewardserve/features").expanduser()


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass
class TrainConfig:
    """The settings of one head training (also the options of ``rewardserve train-head``)."""

    data: str = field(
        metadata=_doc("preference pairs: JSON Lines (.gz) with prompt/chosen/rejected, or a hub dataset id")
    )
    out: str = field(metadata=_doc("output folder for <name>.safetensors and <name>.json (the model card)"))
    backbone: str | None = field(
        default=None, metadata=_doc("the frozen encoder: folder or hub id (default: the bundled all-MiniLM-L6-v2)")
    )
    head: Literal["linear", "mlp"] = field(default="mlp", metadata=_doc("the head on the pooled features"))
    hidden: int = field(default=256, metadata=_doc("hidden units of the MLP head"))
    dropout: float = field(default=0.1, metadata=_doc("dropout of the MLP head's hidden layer"))
    weight_decays: tuple[float, ...] = field(
        default=(1e-4, 1e-3, 1e-2, 1e-1), metadata=_doc("weight decays to train with; validation accuracy picks one")
    )
    lr: float = field(default=1e-3, metadata=_doc("learning rate (AdamW)"))
    batch_size: int = field(default=256, metadata=_doc("pairs per optimizer step"))
    max_epochs: int = field(default=200, metadata=_doc("most epochs per weight decay"))
    patience: int = field(default=20, metadata=_doc("stop after this many epochs without a better validation loss"))
    val_fraction: float = field(
        default=0.1, metadata=_doc("share of pairs held out for validation (grouped by the first user message)")
    )
    seed: int = field(default=0, metadata=_doc("seed of the split, the initialisation and the batches"))
    max_length: int = field(
        default=256, metadata=_doc("encoder tokens per (prompt, response); longer texts are truncated")
    )
    balance_length: bool = field(
        default=False, metadata=_doc("weight pairs so that 'chosen longer' and 'chosen shorter' count equally")
    )
    length_penalty: float = field(
        default=0.0,
        metadata=_doc("λ: add λ·corr(reward, log length)² per batch to the loss (keeps the head from counting length)"),
    )
    limit: int | None = field(default=None, metadata=_doc("use only the first N pairs"))
    name: str | None = field(default=None, metadata=_doc("model name (default: the output folder's name)"))
    cache_dir: str = field(default=str(DEFAULT_CACHE), metadata=_doc("where encoder features are cached"))
    encode_batch_tokens: int = field(default=4096, metadata=_doc("padded tokens per encoder forward"))
    extra: dict = field(default_factory=dict)
