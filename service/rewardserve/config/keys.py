"""API keys (``ApiKey``, ``parse_api_key``) and the check that refuses to serve an open port without them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from .base import ConfigError

if TYPE_CHECKING:
    from .settings import Settings

Scope = Literal["score", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)


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
    from ..errors import InvalidSetName
    from ..references.base import check_set_name

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
