"""The score head of an encoder sequence classifier in float32, whatever the model's dtype.

A bf16 head rounds rewards to bf16's spacing (0.0625 for |r| in 8–16): ties inside a GRPO group,
and a reward that moves with its batch by more than float32's tolerance. Decoders read the pooled
hidden state and apply their linear ``score`` in float32 (``prefix.score_fp32``); an encoder's head
comes in many shapes (BERT: a pooler inside the base model, then ``classifier``; RoBERTa/Electra: a
dense + activation + projection head over the first token; DeBERTa: ``pooler`` + ``classifier``;
DistilBERT: ``pre_classifier`` + ``classifier``), so instead of re-implementing each, the modules that
run after the encoder (every child of the model other than its base model, and the base model's
``pooler``) are converted to float32 once at load and upcast their inputs: the encoder runs in the
model's dtype, everything from the last hidden state on in float32. Pooling that a model's own
``forward`` does between the encoder and its head (ModernBERT's mean pooling) stays in the model's
dtype; the head after it is float32.
"""

from __future__ import annotations

from typing import Any

import torch


def _upcast(x: Any) -> Any:
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _upcast_inputs(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return tuple(_upcast(a) for a in args), {k: _upcast(v) for k, v in kwargs.items()}


def head_modules(model: Any) -> list[tuple[str, torch.nn.Module]]:
    """The modules ``model`` (a ``…ForSequenceClassification``) runs after its encoder that hold
    weights: its children other than the base model, and the base model's ``pooler`` (BERT, ALBERT)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(base, torch.nn.Module) or base is model:
        return []
    out = [(name, m) for name, m in model.named_children() if m is not base]
    pooler = getattr(base, "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        out.append((f"{model.base_model_prefix}.pooler", pooler))
    return [(name, m) for name, m in out if any(True for _ in m.parameters())]


def head_in_float32(model: Any) -> list[str]:
    """Convert ``model``'s head modules (``head_modules``) to float32, their floating-point inputs
    upcast on the way in (a forward pre-hook). Returns their names (empty: nothing to convert, or
    the model already computes in float32). Idempotent; the encoder keeps its dtype."""
    modules = head_modules(model)
    params = [p for _, m in modules for p in m.parameters()]
    if not params or all(p.dtype == torch.float32 for p in params):
        return []
    for _, m in modules:
        m.float()
        m.register_forward_pre_hook(_upcast_inputs, with_kwargs=True)
    return [name for name, _ in modules]
