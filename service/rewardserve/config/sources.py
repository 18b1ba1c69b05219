"""The ``REWARDSERVE_*`` environment as a settings source, without Kubernetes' service-link variables."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar

from pydantic_settings import EnvSettingsSource

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
