"""What every section of the configuration shares: its error, its strictness, the device check."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_device(v: str) -> str:
    """A backbone's ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if v != "cpu" and not v.startswith("cuda") and v != "mps":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {v!r}")
    return v
