"""``Settings``: the whole configuration, every section and one ``backbones:`` entry per backbone, by
kind (``AnyBackboneConfig``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Discriminator, Field, SecretStr, Tag, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ..prompt_formats import check_format_name
from ..verifiers.config import VerifierBackboneConfig
from .backbone import BackboneConfig, BatchingConfig
from .base import ConfigError
from .judge import JudgeBackboneConfig
from .keys import ApiKey, parse_api_key
from .sections import HealthConfig, LimitsConfig, OpenRLHFConfig, ReferencesConfig, SlimeConfig
from .sources import _LAYERED, ServiceLinkAwareEnvSource

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
        from ..errors import PromptFormatError
        from ..prompt_formats import FAMILIES

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


def _looks_like_hub_id(p: str) -> bool:
    return p.count("/") == 1 and not p.startswith((".", "/", "~"))
