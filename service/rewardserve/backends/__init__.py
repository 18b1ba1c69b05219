"""Model backends: load a backbone from its config, encode pairs, run forwards."""

from __future__ import annotations

from typing import TypedDict

from ..config import BackboneConfig, Settings
from .base import Backend, Encoded, ModelInfo


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
            **common,
        )
    raise ValueError(f"unknown backbone kind {cfg.kind!r}")


__all__ = ["Backend", "Encoded", "ModelInfo", "build_backend"]
