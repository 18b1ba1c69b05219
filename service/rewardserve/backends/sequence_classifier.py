"""``sequence_classifier``: any Hugging Face ``AutoModelForSequenceClassification`` with one label.

Encoder RMs read ``prompt`` / ``response`` as a text pair. Decoder RMs (Llama, Qwen, … sequence
classifiers) read one sequence: the chat template when the tokenizer has one (prompt messages +
the response as the last assistant turn), else the plain format of ``formatting.py``. Batches are
right-padded and the model pools the reward at the last non-pad token, so an item scores the same
alone and in a batch; a tokenizer without a pad token pads with EOS.

``share_prompt_prefix`` (decoder models; default on where the model supports it, ``prefix.py``):
items of a batch with the same prompt run the prompt once and their responses on its key/value
cache, when that computes fewer tokens than a plain batch. Encoders never share (their prompt
tokens attend to the response).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rewardclient.protocol import Prompt

from . import cost, prefix
from .base import (
    DTYPES,
    Backend,
    Encoded,
    ModelInfo,
    collate,
    enable_tf32,
    load_to_device,
    resolve_device,
    weights_digest,
)
from .formatting import encode_chat, encode_pair, encode_single
from .fp32_head import head_in_float32

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class SequenceClassifierBackend(Backend):
    def __init__(
        self,
        name: str,
        model_name: str,
        path: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_length: int = 1024,
        revision: str | None = None,
        trust_remote_code: bool = False,
        pad_to_multiple_of: int = 8,
        share_prompt_prefix: bool | None = None,
        max_padding_ratio: float = 1.0,
        attn_implementation: str | None = None,
    ):
        from transformers import AutoTokenizer

        self.name, self._model_name, self.source = name, model_name, path
        self.pad_multiple = pad_to_multiple_of
        self.device, self.dtype = resolve_device(device), DTYPES[dtype]
        enable_tf32(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        self.tokenizer.truncation_side = "left"
        self.tokenizer.model_max_length = 1 << 30  # truncation is ours (formatting.py); no length warnings
        local = Path(path).is_dir()
        with ThreadPoolExecutor(1) as pool:  # the digest reads the files while the load reads them too
            digest = pool.submit(weights_digest, path) if local else None
            self.model = load_to_device(
                path,
                self.device,
                self.dtype,
                revision=revision,
                trust_remote_code=trust_remote_code,
                attn_implementation=attn_implementation,
            )
            self.revision = digest.result() if digest is not None else (revision or "main")
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None) or "eager"
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{path}: a reward model needs exactly one label, this one has {self.model.config.num_labels}"
            )
        self.is_decoder = is_decoder_only(self.model.config)
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise ValueError(f"{path}: the tokenizer has neither a pad nor an EOS token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.pad_id = self.tokenizer.pad_token_id
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)
        self.uses_chat_template = self.is_decoder and bool(getattr(self.tokenizer, "chat_template", None))
        self.input_names = set(self.tokenizer.model_input_names)
        why_not = (
            "an encoder reads the prompt together with the response"
            if not self.is_decoder
            else (prefix.supports_sharing(self.model))
        )
        if share_prompt_prefix and why_not:
            raise ValueError(f"{path}: share_prompt_prefix is not possible with this model: {why_not}")
        self.shares_prefix = why_not is None if share_prompt_prefix is None else share_prompt_prefix
        self.max_padding_ratio = max_padding_ratio  # shared batches: padding cap of each suffix chunk
        # decoders with a base model + score head: pooled hidden state and head in float32 (``_plain``)
        self._fp32_head = self.is_decoder and prefix.has_score_head(self.model)
        # the others (encoders: a pooler and a classifier of their own): the modules after the
        # encoder converted to float32, their inputs upcast (``fp32_head.py``)
        self.float32_head = [] if self._fp32_head else head_in_float32(self.model)
        self.cost_model = cost.CostModel.for_model(self.model.config, self.dtype, self.attn_implementation)

    @property
    def model_names(self) -> list[str]:
        return [self._model_name]

    def model_info(self) -> dict[str, ModelInfo]:
        fmt = "chat_template" if self.uses_chat_template else ("plain_single" if self.is_decoder else "text_pair")
        return {
            self._model_name: ModelInfo(
                name=self._model_name,
                kind="sequence_classifier",
                source=self.source,
                revision=self.revision,
                extra={
                    "architecture": type(self.model).__name__,
                    "input_format": fmt,
                    "share_prompt_prefix": self.shares_prefix,
                    "attn_implementation": self.attn_implementation,
                    "dtype": str(self.dtype).removeprefix("torch."),
                },
            )
        }

    def encode(self, prompt: Prompt, response: str) -> Encoded:
        if not self.is_decoder:
            return encode_pair(self.tokenizer, prompt, response, self.max_length)
        if self.uses_chat_template:
            e = encode_chat(self.tokenizer, prompt, response, self.max_length)
        else:
            e = encode_single(self.tokenizer, prompt, response, self.max_length)
        if self.shares_prefix and e.segments is not None:
            # the prompt's tokens (kept whole at its boundary by the formatter), at least one token left
            e.prefix_len = min(e.segments.count(0), e.length - 1)
        return e

    def batch_cost(self, batch: list[Encoded]) -> int:
        """What ``forward(batch)`` holds at its peak, in tokens (``cost.CostModel``): the plan it
        runs (shared or plain), padded, with its key/value cache and attention's working set."""
        return cost.batch_cost(batch, self.cost_model, self.shares_prefix and len(batch) > 1)

    def forward(self, batch: list[Encoded]) -> np.ndarray:
        p = prefix.plan(batch) if self.shares_prefix and len(batch) > 1 else None
        if p is not None:
            out = np.empty((len(batch), 1))
            with torch.inference_mode():
                shared, rewards = prefix.shared_forward(
                    self.model,
                    batch,
                    p,
                    self.pad_id,
                    self.device,
                    self.pad_multiple,
                    self.max_length,
                    self.max_padding_ratio,
                )
            out[shared, 0] = rewards.cpu().double().numpy()
            if p.rest:
                out[p.rest] = self._plain([batch[i] for i in p.rest])
            return out
        return self._plain(batch)

    def _plain(self, batch: list[Encoded]) -> np.ndarray:
        t = collate(batch, self.pad_id, self.device, self.batch_width(batch))
        t.pop("segments", None)
        if "token_type_ids" not in self.input_names:
            t.pop("token_type_ids", None)
        with torch.inference_mode():
            if self._fp32_head:
                # the base model without a cache, then Hugging Face's pooling (the rightmost non-pad
                # token) and the score head in float32
                base = getattr(self.model, self.model.base_model_prefix)
                hidden = base(**t, use_cache=False).last_hidden_state
                ids = t["input_ids"]
                at = (torch.arange(ids.shape[1], device=ids.device) * (ids != self.pad_id)).argmax(-1)
                logits = prefix.score_fp32(self.model, hidden[torch.arange(len(batch), device=ids.device), at])
            else:
                kw = {"use_cache": False} if self.is_decoder else {}
                logits = self.model(**t, **kw).logits.float()
        rewards: np.ndarray = logits.cpu().double().numpy().reshape(len(batch), 1)
        return rewards


def is_decoder_only(config: PretrainedConfig) -> bool:
    """Encoders (BERT, RoBERTa, DeBERTa, …) are the architectures with a masked-LM head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return (
        not getattr(config, "is_encoder_decoder", False) and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )
