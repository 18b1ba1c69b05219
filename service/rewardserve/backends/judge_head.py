"""A judge's yes/no head: ``raw = logsumexp(logits[yes ids]) − logsumexp(logits[no ids])`` at the
next-token position, computed from the final hidden state and only the yes/no rows of the LM's
output embedding (the full-vocabulary normaliser cancels), in float32."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def single_token_ids(tokenizer: Any, spellings: Sequence[str]) -> dict[str, int]:
    """The spellings that are exactly one (non-unknown) token, with their ids (an id once)."""
    out: dict[str, int] = {}
    unk = getattr(tokenizer, "unk_token_id", None)
    for s in spellings:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] != unk and ids[0] not in out.values():
            out[s] = ids[0]
    return out


class YesNoHead(torch.nn.Module):
    """``raw = logsumexp(h·W_yes) − logsumexp(h·W_no)`` in float32 over the gathered output-embedding
    rows (with the LM head's bias and the model's logit scaling / soft-capping where it has them).
    Maps (n, hidden) to (n, 1), like a sequence classifier's score head."""

    weight: torch.Tensor  # (yes + no ids, hidden), float32
    bias: torch.Tensor

    def __init__(self, lm: Any, yes_ids: Sequence[int], no_ids: Sequence[int]):
        super().__init__()
        out = lm.get_output_embeddings()
        weight = out.weight.detach()
        bias = getattr(out, "bias", None)
        self.n_yes = len(yes_ids)
        ids = torch.tensor([*yes_ids, *no_ids], dtype=torch.long, device=weight.device)
        self.register_buffer("weight", weight.index_select(0, ids).float().clone())
        b = bias.detach().index_select(0, ids).float().clone() if bias is not None else torch.zeros(len(ids))
        self.register_buffer("bias", b.to(weight.device))
        cfg = lm.config
        # Cohere: logits × logit_scale; Granite: logits ÷ logits_scaling; Gemma-2/3: tanh soft-capping
        self.scale = float(getattr(cfg, "logit_scale", None) or 1.0) / float(
            getattr(cfg, "logits_scaling", None) or 1.0
        )
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden.float(), self.weight, self.bias) * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        yes = torch.logsumexp(logits[..., : self.n_yes], dim=-1)
        no = torch.logsumexp(logits[..., self.n_yes :], dim=-1)
        return (yes - no).unsqueeze(-1)


class HeadedLM:
    """The shape ``prefix.shared_forward`` reads: a base model under ``base_model_prefix`` and a
    ``score`` head (here one question set's yes/no head)."""

    base_model_prefix = "model"

    def __init__(self, base: Any, score: torch.nn.Module, config: Any):
        self.model, self.score, self.config = base, score, config
