"""How the reference store's Redis client is created from its URL (and how a URL is shown safely).

- ``redis://[[USER]:PASSWORD@]HOST:PORT/DB`` (``rediss://`` with TLS, ``unix://PATH?db=N``): one
  Redis server (redis-py's ``from_url``).
- ``redis+sentinel://[[USER]:PASSWORD@]HOST1:PORT1[,HOST2:PORT2,...]/MASTER_NAME[/DB]``: Redis
  Sentinel. The sentinels are asked for the current master of ``MASTER_NAME`` on every new
  connection; after a failover the old master's connections fail (the request answers 503, the SDK
  retries) and the next connection goes to the promoted replica, with no service restart. The
  password authenticates to both the Redis servers (``requirepass``/``masterauth``) and the
  sentinels (their ``requirepass``): k8s/base sets all of them from one Secret.

Passwords never appear in messages or logs: use ``redact`` wherever a URL is shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

if TYPE_CHECKING:  # redis is an optional dependency (extra `redis`); redact() works without it
    import redis.asyncio as aioredis

SENTINEL_SCHEME = "redis+sentinel://"
SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)


_SECRET_PARAMS = {"password", "username", "sentinel_password"}


def redact(url: str) -> str:
    """``url`` with its user info replaced by ``***`` (``redis://:pw@h:1/0`` -> ``redis://***@h:1/0``)
    and any ``password``/``username`` query parameter by ``***``. Safe for any password, however it
    is spelled: everything before the *last* ``@`` of the part after the scheme is user info (a
    password with an unescaped ``/``, ``@`` or ``#`` included), and a URL that does not parse as one
    shows as ``<unparseable URL>``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable URL>" if "@" in url or "password" in url.lower() else url
    userinfo, at, rest = rest.rpartition("@")
    try:
        parts = urlsplit(f"{scheme}://{rest}")
    except ValueError:
        return f"{scheme}://***@<unparseable URL>" if at else "<unparseable URL>"
    query = parts.query
    if query:
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in parse_qsl(query, keep_blank_values=True)],
            safe="*/",
        )
    return f"{scheme}://{'***@' if at else ''}{parts.netloc}{parts.path}" + (f"?{query}" if query else "")


class SentinelUrl(TypedDict):
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``redis+sentinel://[[user]:password@]h1:p1,h2:p2/master[/db]`` -> its parts."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"not a {SENTINEL_SCHEME} URL: {redact(url)}")
    rest = url[len(SENTINEL_SCHEME) :]
    userinfo, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not hosts or not 1 <= len(parts) <= 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(
            f"bad sentinel URL {redact(url)}: "
            f"expected {SENTINEL_SCHEME}[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"
        )
    sentinels = []
    for h in hosts.split(","):
        host, _, port = h.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad sentinel address {h!r} in {redact(url)}: expected HOST:PORT")
        sentinels.append((host.strip("[]"), int(port)))
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    return {
        "sentinels": sentinels,
        "service": parts[0],
        "db": int(parts[1]) if len(parts) == 2 else 0,
        "username": unquote(username) or None,
        "password": unquote(password) or None,
    }


def connect(url: str, timeout: float = 2.0) -> aioredis.Redis:
    """An asyncio Redis client (string replies) for ``url``; connects lazily, on first use."""
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import Sentinel

    common: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout, "decode_responses": True}
    if url.startswith(SENTINEL_SCHEME):
        p = parse_sentinel_url(url)
        sentinel = Sentinel(
            p["sentinels"],
            sentinel_kwargs={
                "socket_connect_timeout": timeout,
                "socket_timeout": timeout,
                "username": p["username"],
                "password": p["password"],
            },
        )
        master: aioredis.Redis = sentinel.master_for(
            p["service"], db=p["db"], username=p["username"], password=p["password"], **common
        )
        return master
    return aioredis.from_url(url, **common)


async def close(client: aioredis.Redis) -> None:
    """Close ``client`` and, for a Sentinel client, its connections to the sentinels."""
    await client.aclose()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
