"""``load_settings``: the YAML file, the environment and the command-line flags layered into one
``Settings``; a value that does not validate names the variable, the flag or the file it came from."""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError

from .base import ConfigError
from .settings import _BACKBONE_TAGS, Settings
from .sources import _LAYERED, ServiceLinkAwareEnvSource

DEFAULT_CONFIG_NAME = "default.yaml"


def default_config_path() -> Path:
    return Path(str(resources.files("rewardserve") / "data" / DEFAULT_CONFIG_NAME))


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
