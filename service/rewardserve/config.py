"""Configuration: one YAML file validated by pydantic, overridable from the environment and the command line.

Precedence (highest first): command-line flags (``rewardserve serve --port``), then environment
variables ``REWARDSERVE_*`` (nested keys joined with ``__``, e.g. ``REWARDSERVE_BATCHING__MAX_WAIT_MS=1``),
then the YAML file, then the defaults below. With no file, the embedded default (``data/default.yaml``)
is used: two reward models on the bundled MiniLM encoder, offline, on the CPU.

Variables that Kubernetes puts into every pod for each Service of its namespace (service links:
``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT[_<PORT>]``, ``<NAME>_PORT=tcp://IP:PORT``,
``<NAME>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]``) are never settings, even where their names start
with ``REWARDSERVE_`` (the Service ``rewardserve`` gives ``REWARDSERVE_PORT=tcp://10.96.0.12:8000``):
they are recognised and ignored, with a debug log line. A value that does not parse names the
variable, the flag or the file it came from.
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from rewardclient.protocol import DEFAULT_AGGREGATE, MAX_ABS_VALUE, AggregateMethod

from .kinds import KINDS
from .prompt_formats import check_format_name
from .verifiers.config import VerifierBackboneConfig

DEFAULT_CONFIG_NAME = "default.yaml"
Scope = Literal["score", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        "(backends/prefix.py CostModel); None picks the per-device default (cpu 1024, cuda 32768)",
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
        if v != "cpu" and not v.startswith("cuda") and v != "mps":
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {v!r}")
        return v

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


# -- kind: judge (backends/judge.py serves it; its config lives here, free of torch) ----------------

# the question first: it joins the prefix a GRPO group shares, so each response adds only its own tokens
DEFAULT_TEMPLATE = "{question} Answer Yes or No.\n\nReply:\n{response}"
DEFAULT_YES_TOKENS = ("Yes", " Yes", "yes", " yes")
DEFAULT_NO_TOKENS = ("No", " No", "no", " no")
TEMPLATE_FIELDS = frozenset({"response", "question", "conversation"})


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_template(template: str) -> str:
    """A judge turn template: a ``str.format`` string whose fields are only ``{response}``,
    ``{question}`` and optionally ``{conversation}`` (no attributes, indices, conversions or format
    specs; ``{{`` and ``}}`` for literal braces), with both ``{response}`` and ``{question}``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"template is not a valid format string: {e}") from None
    used = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(
                f"template field {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                f" is not allowed: use only {{response}}, {{question}} and {{conversation}}"
            )
        used.add(name)
    missing = {"response", "question"} - used
    if missing:
        raise ValueError(f"template needs {', '.join('{' + m + '}' for m in sorted(missing))}")
    return template


class JudgeModelConfig(ModelConfig):
    """One judge model: a yes/no question put to the backbone's LM (plus the reference settings every
    model has: ``transform``, ``default_reference``, ``missing_reference``)."""

    question: str = Field(
        min_length=1, description="the yes/no question, e.g. 'Is the reply polite?'; raw = log P(Yes) − log P(No)"
    )
    template: str | None = Field(
        None,
        description="content of the judge's user turn: a format string with {response} and {question} (and "
        "optionally {conversation}: the conversation as plain text there instead of as turns); default: "
        + repr(DEFAULT_TEMPLATE),
    )
    yes_tokens: list[str] = Field(
        list(DEFAULT_YES_TOKENS),
        min_length=1,
        description="spellings of Yes; those that are one token of the tokenizer are summed (at least one must be)",
    )
    no_tokens: list[str] = Field(
        list(DEFAULT_NO_TOKENS),
        min_length=1,
        description="spellings of No; those that are one token of the tokenizer are summed (at least one must be)",
    )

    _template = field_validator("template")(lambda v: v if v is None else check_template(v))

    @model_validator(mode="after")
    def _judge_only(self) -> JudgeModelConfig:
        if self.head is not None or not self.length_correction:
            raise ValueError("judge models take no 'head' or 'length_correction' (encoder_head only)")
        if set(self.yes_tokens) & set(self.no_tokens):
            raise ValueError(f"yes_tokens and no_tokens overlap: {sorted(set(self.yes_tokens) & set(self.no_tokens))}")
        return self

    @property
    def turn_template(self) -> str:
        return self.template or DEFAULT_TEMPLATE


class JudgeBackboneConfig(BaseModel):
    """A ``kind: judge`` backbone: one causal LM, one batcher, one or more questions (models)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["judge"] = "judge"
    path: str = Field(description="local folder or hub id of a causal LM with a chat template")
    revision: str | None = Field(None, description="hub revision (git ref) when path is a hub id")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or mps")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights and activations")
    max_length: int = Field(
        1024, gt=8, description="tokens per (conversation, response, question); longer items lose their oldest tokens"
    )
    trust_remote_code: bool = Field(False, description="run model code shipped with a hub checkpoint")
    pad_to_multiple_of: int = Field(8, gt=0, description="batches are padded to a multiple of this many tokens")
    share_prompt_prefix: bool | None = Field(
        None,
        description="items with the same conversation (a GRPO group), or an item's several questions, run "
        "their common tokens once (exact); None: on where the model supports it (full attention)",
    )
    batching: BatchingConfig | None = Field(None, description="overrides the top-level batching section")
    models: dict[str, JudgeModelConfig] = Field(min_length=1)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "cpu" and not v.startswith("cuda") and v != "mps":
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {v!r}")
        return v


# -- kind: verifier (verifiers/config.py: pure pydantic) and the union of every kind ------------------


_BACKBONE_TAGS = ("model", "verifier", "judge")


def _backbone_tag(v: Any) -> str:
    kind = v.get("kind") if isinstance(v, Mapping) else getattr(v, "kind", None)
    return kind if kind in ("verifier", "judge") else "model"


AnyBackboneConfig = Annotated[
    Annotated[BackboneConfig, Tag("model")]
    | Annotated[VerifierBackboneConfig, Tag("verifier")]
    | Annotated[JudgeBackboneConfig, Tag("judge")],
    Discriminator(_backbone_tag),
]
"""A ``backbones:`` section, by its ``kind``: ``verifier`` (checks in a process pool), ``judge`` (a
causal LM asked yes/no questions), anything else a network with reward heads (``BackboneConfig``)."""


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0, description="largest request body (413 above)")
    max_items_per_request: int = Field(1024, gt=0, description="items per score request")
    max_text_chars: int = Field(200_000, gt=0, description="prompt + response characters per item")
    max_models_per_request: int = Field(16, gt=0, description="models named in one score request")
    max_references_per_upload: int = Field(10_000, gt=0, description="references per upload request")


class ReferencesConfig(_Strict):
    store: str = Field(
        "sqlite:///~/.cache/rewardserve/references.db", description="sqlite:///PATH or redis://HOST:PORT/DB"
    )
    revision_mismatch: Literal["warn", "reject"] = Field(
        "warn", description="a stored reference made with another model revision: warn in the result, or 422"
    )


class HealthConfig(_Strict):
    """When forward failures or a hung forward turn ``/readyz``, then ``/healthz``, to 503 (health.py)."""

    max_consecutive_failures: int = Field(
        3,
        gt=0,
        description="this many failed forwards in a row on one backbone: /readyz answers 503 until one succeeds",
    )
    max_forward_seconds: float = Field(
        60.0, gt=0, description="a forward running longer than this: /readyz answers 503 until it returns"
    )
    liveness_grace_seconds: float = Field(
        60.0,
        ge=0,
        description="either state lasting this much longer: /healthz answers 503 too (the kubelet restarts the pod)",
    )
    recheck_seconds: float = Field(
        10.0,
        gt=0,
        description="while failures keep a backbone unready, try one small forward of it this often "
        "(no traffic comes to an unready pod to show that it works again)",
    )


class TrainerRouteConfig(_Strict):
    """What a trainer's own route scores with (``openrlhf:`` for ``/get_reward``, ``slime:`` for
    ``/slime/reward``): its requests carry no options of their own."""

    models: list[str] | None = Field(None, description="default: every configured model")
    method: AggregateMethod = Field(DEFAULT_AGGREGATE, description="the aggregate returned as the reward")
    weights: dict[str, Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]] | None = (
        Field(None, description="per-model weights of the aggregate (default: 1 each; |w| ≤ 1e6)")
    )
    prompt_format: str | None = Field(
        None,
        description="how the route's string prompts are read (see the top-level prompt_format); default: the "
        "top-level one",
    )

    reference_set: str = Field(
        "default",
        description="the reference set the route scores against; a request's X-Reference-Set header overrides it",
    )

    @field_validator("reference_set")
    @classmethod
    def _set_name(cls, v: str) -> str:
        from .references.base import check_set_name

        return check_set_name(v)

    _format = field_validator("prompt_format")(lambda v: v if v is None else check_format_name(v))


class OpenRLHFConfig(TrainerRouteConfig):
    """``POST /get_reward`` (OpenRLHF's ``--reward.remote_url``): the aggregate returned as ``rewards``."""


class SlimeConfig(TrainerRouteConfig):
    """``POST /slime/reward`` (slime's ``--rm-type remote_rm``): the aggregate returned as ``score``."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REWARDSERVE_", env_nested_delimiter="__", extra="forbid")

    host: str = Field("127.0.0.1", description="address the HTTP server listens on; 0.0.0.0 listens on every interface")
    port: int = Field(8000, description="TCP port the HTTP server listens on")
    keep_alive_seconds: float = Field(
        75.0,
        gt=0,
        description="seconds an idle HTTP keep-alive connection stays open; keep it above the idle "
        "timeout of any load balancer or proxy in front (theirs must close first, or a "
        "request sent as the server closes the connection is lost)",
    )
    api_keys: SecretStr | None = Field(
        None,
        description="comma-separated API keys, each 'KEY [scope=score|admin] [sets=A+B]'; when set (or "
        "api_keys_file), every route but open_routes needs 'Authorization: Bearer <key>'. "
        "Env: REWARDSERVE_API_KEYS",
    )
    api_keys_file: str | None = Field(
        None,
        description="a file with one API key per line, 'KEY [scope=score|admin] [sets=A,B]' (comments with #); "
        "a plain KEY has scope admin and every set",
    )
    open_routes: list[str] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics"], description="routes that need no API key"
    )
    torch_threads: int | None = Field(None, gt=0, description="torch intra-op threads; None: torch's default")
    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    references: ReferencesConfig = ReferencesConfig()
    openrlhf: OpenRLHFConfig = OpenRLHFConfig()
    slime: SlimeConfig = SlimeConfig()
    prompt_format: str = Field(
        "auto",
        description="how string prompts are read: 'auto' (parse a chat-templated string back into messages, "
        "detecting the family), 'plain', a family (chatml, llama3, llama2, gemma, phi3, zephyr) or "
        "'tokenizer:<path or hub id>' (that tokenizer's chat template); a request may override it",
    )
    allowed_prompt_formats: list[str] = Field(
        default_factory=list,
        description="the 'tokenizer:' formats a request's prompt_format may name, e.g. ['tokenizer:models/qwen'] "
        "(besides auto, plain and the families, which are always allowed, and the configured prompt_format and "
        "openrlhf.prompt_format); a request naming any other 'tokenizer:' is refused (422)",
    )
    health: HealthConfig = HealthConfig()
    allow_unauthenticated: bool = Field(
        False,
        description="let `rewardserve serve` listen on a non-loopback host without API keys (anyone who "
        "reaches the port may score and overwrite references). Env: REWARDSERVE_ALLOW_UNAUTHENTICATED",
    )
    backbones: dict[str, AnyBackboneConfig] = Field(
        default_factory=dict,
        description="one section per backbone, by kind: encoder_head, sequence_classifier, judge, verifier",
    )
    # folder that relative paths (heads, model folders) are resolved against; set by load_settings
    base_dir: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # values given to the constructor win over the environment; load_settings has layered the
        # file, the environment and the flags itself already
        if _LAYERED.get():
            return (init_settings,)
        return (init_settings, ServiceLinkAwareEnvSource(settings_cls))

    _format = field_validator("prompt_format")(check_format_name)

    @field_validator("allowed_prompt_formats")
    @classmethod
    def _allowed_formats(cls, v: list[str]) -> list[str]:
        for name in v:
            check_format_name(name)
        return v

    def request_prompt_formats(self) -> list[str]:
        """The ``tokenizer:`` formats a request may name: ``allowed_prompt_formats`` and the configured ones."""
        configured = [self.prompt_format, self.openrlhf.prompt_format, *self.allowed_prompt_formats]
        return list(dict.fromkeys(f for f in configured if f and f.startswith("tokenizer:")))

    def check_prompt_format(self, name: str) -> str:
        """``name`` if a request may use it: auto, plain, a family or alias, or a ``tokenizer:`` format
        the configuration lists (``request_prompt_formats``); else ``PromptFormatError`` (422) naming the
        allowed ones. A request can never make the service read a folder the operator did not list."""
        if not name.startswith("tokenizer:"):
            return check_format_name(name)
        allowed = self.request_prompt_formats()
        if name in allowed:
            return name
        from .errors import PromptFormatError
        from .prompt_formats import FAMILIES

        shown = name if len(name) <= 80 else f"{name[:80]}…"
        raise PromptFormatError(
            f"prompt_format {shown!r} is not allowed: use auto, plain, a family ({', '.join(FAMILIES)}) or a "
            f"tokenizer format this service lists in allowed_prompt_formats: {', '.join(allowed) or '(none)'}"
        )

    @model_validator(mode="after")
    def _unique_models(self) -> Settings:
        if not self.backbones:
            raise ValueError("no backbones configured")
        seen: dict[str, str] = {}
        for bname, b in self.backbones.items():
            for m in b.models:
                if m in seen:
                    raise ValueError(f"model name {m!r} is used by backbones {seen[m]!r} and {bname!r}")
                seen[m] = bname
        return self

    def resolve_path(self, p: str) -> str:
        """Resolve a config-relative path (``~`` expanded); hub ids and absolute paths pass through."""
        path = Path(p).expanduser()
        if path.is_absolute() or self.base_dir is None:
            return str(path)
        candidate = Path(self.base_dir) / path
        return str(candidate) if candidate.exists() or not _looks_like_hub_id(p) else p

    def load_api_keys(self) -> list[ApiKey]:
        """Every configured key with its scope and sets (empty: no keys, the API is open)."""
        keys = [
            parse_api_key(k, "api_keys")
            for k in (self.api_keys.get_secret_value() if self.api_keys else "").split(",")
            if k.strip()
        ]
        if self.api_keys_file:
            path = Path(self.api_keys_file).expanduser()
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise ConfigError(f"api_keys_file {path}: {e.strerror}") from None
            keys += [
                parse_api_key(ln, f"api_keys_file {path} line {i}")
                for i, ln in enumerate(lines, 1)
                if ln.strip() and not ln.strip().startswith("#")
            ]
        return keys

    def model_names(self) -> list[str]:
        return [m for b in self.backbones.values() for m in b.models]


@dataclass(frozen=True)
class ApiKey:
    """A key and what it may do: scope ``score`` (score, read models and references) or ``admin``
    (also write and delete references and sets); ``sets``: the reference sets it may use (None: all)."""

    key: str
    scope: Scope = "admin"
    sets: frozenset[str] | None = None

    def __repr__(self) -> str:  # never show the key itself
        return f"ApiKey(scope={self.scope!r}, sets={sorted(self.sets) if self.sets is not None else None})"


MIN_API_KEY_CHARS = 16  # shorter keys are a configuration error (docs/deploy.md: `openssl rand -hex 32`)
_KEY_ATTRIBUTES = ("scope", "sets")


def parse_api_key(entry: str, where: str) -> ApiKey:
    """``KEY [scope=score|admin] [sets=A,B]`` (sets also separated by ``+``, for the comma-separated
    ``api_keys``); a plain ``KEY`` keeps full (admin) access to every set. ``where`` names the
    source in errors; the key itself never appears in them. Strict: an entry must start with its
    key (an entry of attributes only, e.g. ``scope=score``, is an error, never a key of that text),
    the key has at least ``MIN_API_KEY_CHARS`` characters, and each attribute appears once."""
    from .errors import InvalidSetName
    from .references.base import check_set_name

    parts = entry.split()
    if not parts or parts[0].partition("=")[0] in _KEY_ATTRIBUTES and "=" in parts[0]:
        raise ConfigError(f"{where}: an API key entry must start with the key, then scope=score|admin and sets=A,B")
    key, *attrs = parts
    seen: set[str] = set()
    scope: Scope = "admin"
    sets: frozenset[str] | None = None
    for attr in attrs:
        name, eq, value = attr.partition("=")
        if name in seen:
            raise ConfigError(f"{where}: {name} is given twice")
        seen.add(name)
        if name == "scope" and eq and value in SCOPES:
            scope = value
        elif name == "sets" and eq and value:
            try:
                sets = frozenset(check_set_name(x) for x in value.replace("+", ",").split(",") if x)
            except InvalidSetName as e:
                raise ConfigError(f"{where}: {e}") from None
        else:
            raise ConfigError(f"{where}: unknown key attribute {name!r}: expected scope=score|admin or sets=A,B")
    if len(key) < MIN_API_KEY_CHARS:
        raise ConfigError(
            f"{where}: an API key has {len(key)} characters; at least {MIN_API_KEY_CHARS} are needed "
            "(make one with `openssl rand -hex 32`)"
        )
    if not key.isascii() or not key.isprintable():
        raise ConfigError(f"{where}: an API key must be printable ASCII (it is sent in an HTTP header)")
    return ApiKey(key, scope, sets)


def _looks_like_hub_id(p: str) -> bool:
    return p.count("/") == 1 and not p.startswith((".", "/", "~"))


def default_config_path() -> Path:
    return Path(str(resources.files("rewardserve") / "data" / DEFAULT_CONFIG_NAME))


ENV_PREFIX = "REWARDSERVE_"
_LAYERED: ContextVar[bool] = ContextVar("rewardserve_settings_layered", default=False)
log = logging.getLogger("rewardserve.config")

# The variables the kubelet generates for every Service with a cluster IP in the pod's namespace
# (pkg/kubelet/envvars): NAME is the Service's name upper-cased with '-' as '_', PORT a port's name
# the same way, N a port number.
_SERVICE_LINK_NAME = re.compile(
    r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)"
)
# ... and <NAME>_PORT, whose value is the first port as a URL (a real setting REWARDSERVE_PORT is a number)
_SERVICE_LINK_URL = re.compile(r"(tcp|udp|sctp)://\S+:[0-9]+")


def is_service_link(name: str, value: str | None) -> bool:
    """Whether the environment variable ``name=value`` is one that Kubernetes generates for a
    Service (a service link), not a setting."""
    upper = name.upper()
    if _SERVICE_LINK_NAME.fullmatch(upper):
        return True
    return upper.endswith("_PORT") and value is not None and _SERVICE_LINK_URL.fullmatch(value.strip()) is not None


class ServiceLinkAwareEnvSource(EnvSettingsSource):
    """The ``REWARDSERVE_*`` environment without the service-link variables of Kubernetes."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        kept: dict[str, str | None] = {}
        for name, value in super()._load_env_vars().items():
            if name.upper().startswith(ENV_PREFIX) and is_service_link(name, value):
                log.debug("ignoring %s: a Kubernetes service-link variable, not a setting", name.upper())
                continue
            kept[name] = value
        return kept

    def origins(self) -> dict[tuple[str, ...], str]:
        """Key path (``("batching", "max_wait_ms")``) → the variable that sets it."""
        names = {k.lower(): k for k in os.environ}
        fields = set(self.settings_cls.model_fields)
        out: dict[tuple[str, ...], str] = {}
        for name in self.env_vars:
            if not name.lower().startswith(ENV_PREFIX.lower()):
                continue
            path = tuple(name[len(ENV_PREFIX) :].lower().split(self.env_nested_delimiter or "__"))
            if path[0] in fields:
                out[path] = names.get(name.lower(), name)
        return out


def _deep_merge(low: dict[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(low)
    for k, v in high.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _source_of(
    loc: tuple[str, ...], flags: Mapping[str, Any], env: Mapping[tuple[str, ...], str], cfg_path: Path
) -> str:
    if loc and loc[0] in flags:
        return f"command-line flag --{loc[0].replace('_', '-')}"
    for n in range(len(loc), 0, -1):
        if loc[:n] in env:
            return f"environment variable {env[loc[:n]]}"
    return f"config file {cfg_path}"


def _format_errors(
    err: ValidationError, flags: Mapping[str, Any], env: Mapping[tuple[str, ...], str], cfg_path: Path
) -> str:
    """One line per source: ``environment variable REWARDSERVE_PORT: port: Input should be …``
    (the value itself is never repeated: it may be a key or a password)."""
    by_source: dict[str, list[str]] = {}
    for e in err.errors():
        loc = tuple(str(x) for x in e["loc"])
        if len(loc) > 2 and loc[0] == "backbones" and loc[2] in _BACKBONE_TAGS:  # the union's tag: not a key
            loc = loc[:2] + loc[3:]
        by_source.setdefault(_source_of(loc, flags, env, cfg_path), []).append(
            f"{'.'.join(loc) or '(top level)'}: {e['msg']}"
        )
    return "; ".join(f"{src}: {', '.join(msgs)}" for src, msgs in by_source.items())


def load_settings(path: str | Path | None = None, **flags: Any) -> Settings:
    """Load the YAML config at ``path`` (or the embedded default) and validate it with the
    environment's ``REWARDSERVE_*`` variables over it and ``flags`` (command-line values; None:
    not given) over both."""
    cfg_path = Path(path).expanduser() if path else default_config_path()
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {cfg_path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {cfg_path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {cfg_path}: the top level must be a mapping")
    given = {k: v for k, v in flags.items() if v is not None}
    env_source = ServiceLinkAwareEnvSource(Settings)
    try:
        env_layer = env_source()
    except SettingsError as e:  # a section given as JSON that does not parse
        field = re.search(r'field "(\w+)"', str(e))
        var = env_source.origins().get((field.group(1),), "REWARDSERVE_*") if field else "REWARDSERVE_*"
        raise ConfigError(f"environment variable {var}: {field.group(1) if field else e}: not valid JSON") from None
    env = env_source.origins()
    data = _deep_merge(_deep_merge(data, env_layer), given)
    data.setdefault("base_dir", str(cfg_path.parent.resolve()))
    token = _LAYERED.set(True)  # the environment is merged in above: not read again
    try:
        return Settings(**data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, given, env, cfg_path)) from None
    finally:
        _LAYERED.reset(token)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(settings: Settings) -> None:
    """Refuse to serve without API keys on a non-loopback address unless ``allow_unauthenticated``
    says so: whoever reaches the port could score and overwrite the references every trainer uses."""
    if is_loopback_host(settings.host) or settings.allow_unauthenticated or settings.load_api_keys():
        return
    raise ConfigError(
        f"refusing to listen on {settings.host}:{settings.port} without API keys: anyone who reaches this port could "
        "score and overwrite stored references. Set REWARDSERVE_API_KEYS (comma-separated) or api_keys_file, listen on "
        "127.0.0.1, or pass --allow-unauthenticated (config allow_unauthenticated: true, env "
        "REWARDSERVE_ALLOW_UNAUTHENTICATED=true) if something else guards the port."
    )
