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

The sections live in modules of their own, all re-exported here (``from rewardserve.config import X``):
``backbone`` (a network's backbone, its models and batching), ``judge`` (a judge backbone, its
template and yes/no spellings), ``sections`` (limits, references, health, the trainers' routes),
``settings`` (``Settings``: every section, the backbones by kind), ``keys`` (API keys and the
exposure check), ``sources`` (the environment without service links) and ``loading``
(``load_settings``).
"""

from __future__ import annotations

from .backbone import DEVICE_DEFAULTS, BackboneConfig, BatchingConfig, ModelConfig
from .base import ConfigError
from .judge import (
    DEFAULT_NO_TOKENS,
    DEFAULT_TEMPLATE,
    DEFAULT_YES_TOKENS,
    TEMPLATE_FIELDS,
    JudgeBackboneConfig,
    JudgeModelConfig,
    check_template,
    template_fields,
)
from .keys import MIN_API_KEY_CHARS, SCOPES, ApiKey, Scope, check_exposure, is_loopback_host, parse_api_key
from .loading import DEFAULT_CONFIG_NAME, default_config_path, load_settings
from .sections import HealthConfig, LimitsConfig, OpenRLHFConfig, ReferencesConfig, SlimeConfig, TrainerRouteConfig
from .settings import AnyBackboneConfig, Settings
from .sources import ENV_PREFIX, ServiceLinkAwareEnvSource, is_service_link

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_NO_TOKENS",
    "DEFAULT_TEMPLATE",
    "DEFAULT_YES_TOKENS",
    "DEVICE_DEFAULTS",
    "ENV_PREFIX",
    "MIN_API_KEY_CHARS",
    "SCOPES",
    "TEMPLATE_FIELDS",
    "AnyBackboneConfig",
    "ApiKey",
    "BackboneConfig",
    "BatchingConfig",
    "ConfigError",
    "HealthConfig",
    "JudgeBackboneConfig",
    "JudgeModelConfig",
    "LimitsConfig",
    "ModelConfig",
    "OpenRLHFConfig",
    "ReferencesConfig",
    "Scope",
    "ServiceLinkAwareEnvSource",
    "Settings",
    "SlimeConfig",
    "TrainerRouteConfig",
    "check_exposure",
    "check_template",
    "default_config_path",
    "is_loopback_host",
    "is_service_link",
    "load_settings",
    "parse_api_key",
    "template_fields",
]
