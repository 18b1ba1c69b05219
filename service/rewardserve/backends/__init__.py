"""Model backends: load a backbone from its config, encode pairs, run forwards."""

from __future__ import annotations

import logging
from typing import TypedDict

from ..config import BackboneConfig, Settings
from .base import Backend, Encoded, ModelInfo

log = logging.getLogger("rewardserve")


class _LoadOptions(TypedDict):
    """The loading options that every backend takes."""

    device: str
    dtype: str
    max_length: int
    revision: str | None
    trust_remote_code: bool
    pad_to_multiple_of: int


def build_backend(name: str, cfg: BackboneConfig, settings: Settings) -> Backend:
    """Load the backbone ``name`` described by ``cfg`` (paths resolved against the config file)."""
    path = settings.resolve_path(cfg.path) if cfg.path else None
    log.info("backbone %s: %s", name, describe_settings(cfg, settings))
    common = _LoadOptions(
        device=cfg.device,
        dtype=cfg.dtype,
        max_length=cfg.max_length,
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
    )
    if cfg.kind == "encoder_head":
        from .encoder_head import EncoderHeadBackend

        heads: dict[str, str] = {}
        for m, mc in cfg.models.items():
            if mc.head is None:  # BackboneConfig's validator already refuses this
                raise ValueError(f"model {m!r}: encoder_head models need 'head' (a safetensors file)")
            heads[m] = settings.resolve_path(mc.head)
        uncorrected = {m for m, mc in cfg.models.items() if not mc.length_correction}
        return EncoderHeadBackend(name, heads=heads, path=path, length_correction_off=uncorrected, **common)
    if cfg.kind == "sequence_classifier":
        from .sequence_classifier import SequenceClassifierBackend

        (model_name,) = cfg.models
        if path is None:  # BackboneConfig's validator already refuses this
            raise ValueError("a sequence_classifier backbone needs 'path'")
        return SequenceClassifierBackend(
            name,
            model_name=model_name,
            path=path,
            share_prompt_prefix=cfg.share_prompt_prefix,
            max_padding_ratio=(cfg.batching or settings.batching).padding_ratio_for(cfg.device),
            attn_implementation=cfg.attn_implementation,
            **common,
        )
    raise ValueError(f"unknown backbone kind {cfg.kind!r}")


def describe_settings(cfg: BackboneConfig, settings: Settings) -> str:
    """The settings a backbone runs with, those chosen by its device (left unset) marked: printed at start."""
    b = cfg.batching or settings.batching
    chosen = cfg.device_defaults()
    unset = {k for k in ("max_batch_tokens", "max_padding_ratio", "max_queued_tokens") if getattr(b, k) is None}
    values = {
        "device": cfg.device,
        "dtype": cfg.dtype,
        "max_length": cfg.max_length,
        "max_batch_tokens": b.batch_tokens_for(cfg.device),
        "max_padding_ratio": b.padding_ratio_for(cfg.device),
        "max_queued_tokens": b.queued_tokens_for(cfg.device),
    }
    return ", ".join(f"{k} {v}" + (" (device default)" if k in chosen or k in unset else "") for k, v in values.items())


__all__ = ["Backend", "Encoded", "ModelInfo", "build_backend"]
