"""A backbone's sections: the network (``BackboneConfig``: encoder_head, sequence_classifier), its
models (``ModelConfig``) and how its batches form (``BatchingConfig``, also the top-level default)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from rewardclient.protocol import MAX_ABS_VALUE

from ..kinds import KINDS
from .base import _Strict, check_device


class ModelConfig(_Strict):
    """One reward model served under ``name``."""

    head: str | None = Field(None, description="encoder_head only: path of the head's safetensors file")
    length_correction: bool = Field(
        True,
        description="encoder_head only: apply the length correction the head's file carries (reward minus "
        "length_coef × response characters, fitted so that reward and length are uncorrelated); false serves "
        "the uncorrected reward",
    )
    transform: Literal["lsc", "identity"] = Field(
        "lsc", description="lsc: transformed = log σ(raw − reference); identity: transformed = raw"
    )
    default_reference: float = Field(
        0.0,
        allow_inf_nan=False,
        ge=-MAX_ABS_VALUE,
        le=MAX_ABS_VALUE,
        description="r_ref for prompts with no stored reference (|x| ≤ 1e6)",
    )
    missing_reference: Literal["default", "error"] = Field(
        "default", description="what to do when no inline or stored reference exists: use default_reference, or 422"
    )


class BatchingConfig(_Strict):
    max_batch_tokens: int | None = Field(
        None,
        gt=0,
        description="what one forward may hold, in tokens: padded tokens, plus, for decoder sequence classifiers, "
        "the prompt cache of a shared batch, each item's keys/values in attention and attention's working set "
        "(backends/cost.py CostModel); None picks the per-device default (cpu 1024, cuda 32768)",
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="how long the first item of a batch waits for company when the worker is idle; with 0 "
        "batches form from what arrives while the previous forward runs",
    )
    max_queued_tokens: int | None = Field(
        None,
        gt=0,
        description="tokens waiting per backbone before 503; None picks the per-device default "
        "(cpu 262144, cuda 1048576: about a minute of an 8B model's forwards on one GPU)",
    )
    sort_by_length: bool = Field(True, description="fill batches with items of similar length (less padding)")
    max_padding_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a batch grows only while pad tokens stay at most this share of its padded tokens; "
        "None picks the per-device default (cpu 0.2: padding costs more than batching "
        "gains there; cuda 0.5: batching gains more, but a pad token costs a real one's compute and memory)",
    )
    forward_workers: int | None = Field(
        None,
        gt=0,
        description="forwards of one backbone that may run at once; None picks the per-device default "
        "(cpu: one per torch intra-op thread, a lone forward still uses every thread; cuda: 1)",
    )

    def workers_for(self, device: str, cpu_threads: int) -> int:
        if self.forward_workers is not None:
            return self.forward_workers
        return 1 if device.startswith("cuda") else max(1, cpu_threads)

    def batch_tokens_for(self, device: str) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return 32_768 if device.startswith("cuda") else 1_024

    def padding_ratio_for(self, device: str) -> float:
        if self.max_padding_ratio is not None:
            return self.max_padding_ratio
        return 0.5 if device.startswith("cuda") else 0.2

    def queued_tokens_for(self, device: str) -> int:
        if self.max_queued_tokens is not None:
            return self.max_queued_tokens
        return 1_048_576 if device.startswith("cuda") else 262_144


# a sequence_classifier backbone's dtype and max_length when its config leaves them unset, per device (see
# BackboneConfig.device_defaults): an 8B reward model in float32 needs 32 GB and runs at half speed,
# and 256 tokens cut RL prompts of 1–2k tokens
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"dtype": "float32", "max_length": 256},
    "cuda": {"dtype": "bfloat16", "max_length": 4096},
    "mps": {"dtype": "float32", "max_length": 256},
}


class BackboneConfig(_Strict):
    """One network in memory, with one batcher. ``encoder_head``: one encoder shared by several heads
    (each head a model). ``sequence_classifier``: a Hugging Face sequence-classification reward model
    (exactly one model)."""

    kind: str = Field(description="the backbone kind (kinds.py): encoder_head or sequence_classifier")
    path: str | None = Field(None, description="local folder or hub id; encoder_head default: bundled all-MiniLM-L6-v2")
    revision: str | None = Field(None, description="hub revision (git ref) when path is a hub id")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or mps")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights and activations; unset: float32, but bfloat16 for a sequence_classifier on cuda"
    )
    max_length: int = Field(
        256,
        gt=8,
        description="tokens per (prompt, response), at most the model's own limit; longer items are truncated; "
        "unset: 256, but 4096 for a sequence_classifier on cuda",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = Field(
        "sdpa",
        description="sequence_classifier: the attention kernels; flash_attention_* need their package and cuda, "
        "and run without share_prompt_prefix (they take no 4D mask)",
    )
    trust_remote_code: bool = Field(
        False, description="run model code shipped with a hub checkpoint (never, unless true)"
    )
    pad_to_multiple_of: int = Field(
        8,
        gt=0,
        description="batches are padded to a multiple of this many tokens: fewer distinct tensor shapes keep "
        "the CPU kernels' primitive cache small and hit (flat memory, bench/README.md) and suit "
        "GPU tensor cores; 1 pads to the longest item only",
    )
    share_prompt_prefix: bool | None = Field(
        None,
        description="sequence_classifier, decoder models: items of a batch with the same prompt run the prompt "
        "once and their responses on its key/value cache (exact); None: on where the model supports "
        "it (decoders with full attention), off for encoders; true on an encoder is an error",
    )
    batching: BatchingConfig | None = Field(None, description="overrides the top-level batching section")
    models: dict[str, ModelConfig]

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"unknown backbone kind {v!r}; expected one of: {', '.join(KINDS)}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    _from_device: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _device_defaults(self) -> BackboneConfig:
        """Fill dtype and max_length by device where the config leaves them unset."""
        family = "cuda" if self.device.startswith("cuda") else self.device
        if self.kind != "sequence_classifier":  # a small encoder and its heads: float32 on any device
            family = "cpu"
        chosen = {k: v for k, v in DEVICE_DEFAULTS[family].items() if k not in self.model_fields_set}
        for key, value in chosen.items():
            setattr(self, key, value)
        self._from_device = chosen
        return self

    def device_defaults(self) -> dict[str, Any]:
        """The settings this backbone took from its device because its config left them unset."""
        return dict(self._from_device)

    @model_validator(mode="after")
    def _models(self) -> BackboneConfig:
        if not self.models:
            raise ValueError("a backbone needs at least one model")
        if self.kind == "sequence_classifier":
            if len(self.models) != 1:
                raise ValueError("a sequence_classifier backbone serves exactly one model")
            if self.path is None:
                raise ValueError("a sequence_classifier backbone needs 'path'")
        if self.kind == "encoder_head":
            for name, m in self.models.items():
                if not m.head:
                    raise ValueError(f"model {name!r}: encoder_head models need 'head' (a safetensors file)")
        return self
