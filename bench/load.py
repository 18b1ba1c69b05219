"""Closed-loop HTTP load against ``POST /v1/score``, run as its own process (``python -m bench.load``).

``--concurrency`` clients each keep exactly one request in flight: send, wait for the whole
response, send the next (no think time). A request carries ``--size`` consecutive items of the
workload pool (each client starts at its own offset and wraps around). 429/503 answers are counted
and the client sleeps ``Retry-After`` (capped at the time left), as a well-behaved trainer would.

Two modes:
- time (default): ``--warmup`` seconds, then a ``--seconds`` window; clients stop sending when the
  window closes and the requests still in flight are awaited (up to ``--max-seconds`` for the whole
  cell; a cell that hits it is flagged not ``steady``). Each request that overlaps the window counts
  its items pro rata to the share of its lifetime inside the window, so work done before the window
  opened (or after it closed) is not credited to it, however long a round of requests takes.
- ``--requests N``: stop after N requests were sent and answered (the memory phase).

The client speaks HTTP/1.1 keep-alive directly on asyncio streams (uvloop when installed) with
pre-serialised bodies, not through an HTTP library: on a 2-core machine the load generator shares
the CPU with the server, and this keeps its share small. Token counts come from the response's
``usage.tokens`` (rewardserve and the naive server both report it). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

from .stats import emit_json, summarize_ms
from .workload import generate, spec

_RETRY_STATUSES = (429, 503)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection (reconnects lazily after an error or ``Connection: close``)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.transport.abort()  # at once: the server sees the client leave
            except Exception:
                pass
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await self.reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


def usage_tokens(body: bytes) -> int | None:
    """``usage.tokens`` of a score response, read from the end of the body without parsing it all."""
    i = body.rfind(b'"tokens"')
    if i < 0:
        return None
    j = body.find(b":", i) + 1
    while j < len(body) and body[j] in b" \t":
        j += 1
    k = j
    while k < len(body) and 48 <= body[k] <= 57:
        k += 1
    return int(body[j:k]) if k > j else None


def server_timing(value: str | None) -> dict[str, float]:
    """``Server-Timing: encode;dur=0.8, forward;dur=41.3`` → {"encode": 0.8, "forward": 41.3} (ms)."""
    out: dict[str, float] = {}
    for part in (value or "").split(","):
        name, _, rest = part.strip().partition(";")
        for param in rest.split(";"):
            k, _, v = param.strip().partition("=")
            if k == "dur" and name:
                try:
                    out[name] = float(v)
                except ValueError:
                    pass
    return out


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Share of the interval [a0, a1] that lies inside [b0, b1] (1 for an instant inside it)."""
    if a1 <= a0:
        return 1.0 if b0 <= a1 <= b1 else 0.0
    return max(0.0, min(a1, b1) - max(a0, b0)) / (a1 - a0)


class Load:
    def __init__(
        self,
        url: str,
        items: list[dict],
        size: int,
        concurrency: int,
        models: list[str] | None,
        path: str = "/v1/score",
        align: int = 1,
    ):
        u = urlsplit(url)
        if u.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, got {url!r}")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.items, self.size, self.concurrency, self.models = items, size, concurrency, models
        self.path, self.align = path, align  # clients start at a multiple of ``align`` (a whole prompt group)
        self._bodies: dict[int, bytes] = {}
        # (completed at, latency, status, items, tokens, server's encode + forward ms or None)
        self.records: list[tuple[float, float, int, int, int | None, float | None]] = []
        self.errors = 0
        self.in_flight = 0
        self.sent = 0
        self._answered = asyncio.Event()

    def raw_request(self, start: int) -> bytes:
        raw = self._bodies.get(start)
        if raw is None:
            n = len(self.items)
            batch = [self.items[(start + i) % n] for i in range(self.size)]
            payload: dict = {"items": batch}
            if self.models:
                payload["models"] = self.models
            body = json.dumps(payload, separators=(",", ":")).encode()
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            raw = self._bodies[start] = head + body
        return raw

    async def client(self, k: int, deadline: float, max_requests: int | None) -> None:
        conn = HttpConnection(self.host, self.port)
        n = len(self.items)
        pos = (k * n // self.concurrency) % n
        pos -= pos % self.align
        try:
            while time.perf_counter() < deadline:
                if max_requests is not None:
                    if self.sent >= max_requests:
                        return
                    self.sent += 1
                raw = self.raw_request(pos)
                pos = (pos + self.size) % n
                t0 = time.perf_counter()
                self.in_flight += 1
                try:
                    status, headers, body = await conn.request(raw)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                    self.errors += 1
                    conn.close()
                    await asyncio.sleep(0.05)
                    continue
                finally:
                    self.in_flight -= 1
                t1 = time.perf_counter()
                st = server_timing(headers.get("server-timing"))
                bare = st["encode"] + st["forward"] if "encode" in st and "forward" in st else None
                self.records.append(
                    (t1, t1 - t0, status, self.size, usage_tokens(body) if status == 200 else None, bare)
                )
                self._answered.set()
                if status in _RETRY_STATUSES:
                    try:
                        wait = float(headers.get("retry-after", "1"))
                    except ValueError:
                        wait = 1.0
                    await asyncio.sleep(max(0.0, min(wait, deadline - time.perf_counter())))
        finally:
            conn.close()

    async def run_timed(self, seconds: float, warmup: float, max_seconds: float | None = None) -> dict:
        """Measure the window [warmup, warmup + seconds]. Clients send until the window closes, then
        the requests still in flight are awaited (up to ``max_seconds`` from the start). Every
        request counts its items pro rata to the share of its lifetime inside the window, so work
        done before the window opened, or after it closed, is not credited to it."""
        t0 = time.perf_counter()
        t_start = t0 + warmup
        t_end = t_start + seconds
        cap = t0 + (max_seconds if max_seconds is not None else warmup + seconds + 10.0)
        tasks = [asyncio.ensure_future(self.client(k, t_end, None)) for k in range(self.concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, cap - time.perf_counter()))
        in_flight = self.in_flight
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        res = self._summary(self.records, seconds, in_flight, window=(t_start, t_end))
        res["window_capped"] = bool(pending)
        # every request that overlapped the window finished: the rate is a measurement, not a bound
        res["steady"] = res["requests"] > 0 and not pending
        return res

    async def run_requests(self, n: int, timeout: float) -> dict:
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(self.client(k, t0 + timeout, n)) for k in range(self.concurrency)]
        await asyncio.gather(*tasks)
        return self._summary(self.records, time.perf_counter() - t0, 0)

    def _summary(self, recs: list, duration: float, in_flight: int, window: tuple[float, float] | None = None) -> dict:
        if window is not None:
            recs = [r for r in recs if r[0] > window[0] and r[0] - r[1] < window[1]]  # overlapping the window
        ok = [r for r in recs if r[2] == 200]
        statuses: dict[str, int] = {}
        for r in recs:
            statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
        share = [1.0] * len(ok) if window is None else [overlap(r[0] - r[1], r[0], *window) for r in ok]
        items = sum(r[3] * f for r, f in zip(ok, share))
        tok = [r[4] for r in ok]
        tokens = sum(t * f for t, f in zip(tok, share)) if ok and all(t is not None for t in tok) else None
        return {
            "concurrency": self.concurrency,
            "size": self.size,
            "window_s": duration,
            "requests": len(ok),
            "items": items,
            "tokens": tokens,
            "items_per_s": items / duration if duration > 0 else 0.0,
            "tokens_per_s": tokens / duration if tokens is not None and duration > 0 else None,
            "latency_ms": summarize_ms([r[1] for r in ok]),
            # per request: client latency − the server's own encode + forward time for it (the cost
            # of serving it beyond tokenizing and running the model), where the server says (Server-Timing)
            "added_ms": summarize_ms([r[1] - r[5] / 1000 for r in ok if r[5] is not None])
            if any(r[5] is not None for r in ok)
            else None,
            "status": statuses,
            "rejected_429": statuses.get("429", 0),
            "rejected_503": statuses.get("503", 0),
            "other_errors": sum(v for k, v in statuses.items() if k not in ("200", "429", "503")) + self.errors,
            "in_flight_at_end": in_flight,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="base URL of the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--workload", default="mixed", help="mixed | uniform | short | grpo1/4/8/16 (see bench/workload.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=1024, help="distinct items in the workload pool")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--size", type=int, default=1, help="items per request")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds (time mode)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (time mode)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="time mode: hard limit of the whole cell, in-flight requests included (default warmup + seconds + 10)",
    )
    p.add_argument("--requests", type=int, default=None, help="count mode: stop after this many requests")
    p.add_argument("--timeout", type=float, default=600.0, help="count mode: give up after this many seconds")
    p.add_argument("--models", default=None, help="comma-separated model names (default: every served model)")
    p.add_argument("--path", default="/v1/score")
    p.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    return p.parse_args(argv)


async def _amain(a: argparse.Namespace) -> dict:
    items = generate(spec(a.workload), a.pool, a.seed)
    models = [m for m in a.models.split(",") if m] if a.models else None
    load = Load(a.url, items, a.size, a.concurrency, models, a.path, align=spec(a.workload).group)
    if a.requests is not None:
        res = await load.run_requests(a.requests, a.timeout)
    else:
        res = await load.run_timed(a.seconds, a.warmup, a.max_seconds)
    res["workload"] = a.workload
    return res


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        import uvloop

        res = uvloop.run(_amain(a))
    except ImportError:
        res = asyncio.run(_amain(a))
    emit_json(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
