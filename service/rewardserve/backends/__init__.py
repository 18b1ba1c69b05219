"""Model backends: load a backbone from its config, encode pairs, run forwards."""

from __future__ import annotations

from ..config import BackboneConfig, Settings
from .base import Backend, Encoded, ModelInfo


def build_backend(name: str, cfg: BackboneConfig, settings: Settings) -> Backend:
    """Load the backbone ``name`` described by ``cfg`` (paths resolved against the config file)."""
    path = settings.resolve_path(cfg.path) if cfg.path else None
    common = dict(
        device=cfg.device,
        dtype=cfg.dtype,
        max_length=cfg.max_length,
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
    )
    if cfg.kind == "encoder_head":
        from .encoder_head import EncoderHeadBackend

        heads = {m: settings.resolve_path(mc.head) for m, mc in cfg.models.items()}  # type: ignore[arg-type]
        return EncoderHeadBackend(name, heads=heads, path=path, **common)
    if cfg.kind == "sequence_classifier":
        from .sequence_classifier import SequenceClassifierBackend

        (model_name,) = cfg.models
        return SequenceClassifierBackend(
            name,
            model_name=model_name,
            path=path,  # type: ignore[arg-type]
            share_prompt_prefix=cfg.share_prompt_prefix,
            max_padding_ratio=(cfg.batching or settings.batching).padding_ratio_for(cfg.device),
            **common,
        )
    raise ValueError(f"unknown backbone kind {cfg.kind!r}")


__all__ = ["Backend", "Encoded", "ModelInfo", "build_backend"]
