"""Forward health: whether the model forwards of this process still work, for ``/readyz`` and ``/healthz``.

The batchers report every forward (``watch``): when it starts, and whether it returned or raised.
From that:

- **not ready** (``/readyz`` 503: the pod leaves the Service, traffic moves to other replicas) when
  a backbone's last ``max_consecutive_failures`` forwards all raised (e.g. a sticky CUDA error:
  every batch would answer 500 ``model_error``), or when a forward has run longer than
  ``max_forward_seconds`` (a hung forward: its queue would only fill);
- **not live** (``/healthz`` 503: the kubelet restarts the container) when that state has lasted
  ``liveness_grace_seconds`` more — a failure streak still unbroken, or the hung forward still
  running.

One forward that returns ends a failure streak, and a hung forward that finally returns is no
longer counted: both probes answer 200 again. Once the pod is unready no traffic comes to show that
a failing backbone works again, so the app retries one small forward of it every
``recheck_seconds`` (``failing_backbones``; app.py). The thresholds are config ``health:``
(docs/configuration.md).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import HealthConfig


@dataclass
class _Streak:
    failures: int = 0
    unready_since: float | None = None  # when the streak reached the threshold
    last_error: str = ""


class ForwardHealth:
    def __init__(
        self,
        max_consecutive_failures: int = 3,
        max_forward_seconds: float = 60.0,
        liveness_grace_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures = max_consecutive_failures
        self.max_forward = max_forward_seconds
        self.grace = liveness_grace_seconds
        self.clock = clock
        self._streaks: dict[str, _Streak] = {}
        self._running: dict[int, tuple[str, float]] = {}  # forward id -> (backbone, start)
        self._ids = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: HealthConfig) -> ForwardHealth:
        return cls(cfg.max_consecutive_failures, cfg.max_forward_seconds, cfg.liveness_grace_seconds)

    @contextmanager
    def watch(self, backbone: str) -> Iterator[None]:
        """Wrap one forward of ``backbone``: an exception is a failure, a return a success; a
        cancellation counts as neither."""
        fid = next(self._ids)
        with self._lock:
            self._running[fid] = (backbone, self.clock())
        try:
            yield
        except Exception as e:
            self._finished(fid, backbone, f"{type(e).__name__}: {e}")
            raise
        except BaseException:
            with self._lock:
                self._running.pop(fid, None)
            raise
        else:
            self._finished(fid, backbone, None)

    def _finished(self, fid: int, backbone: str, error: str | None) -> None:
        with self._lock:
            self._running.pop(fid, None)
            s = self._streaks.setdefault(backbone, _Streak())
            if error is None:
                self._streaks[backbone] = _Streak()
                return
            s.failures += 1
            s.last_error = error[:300]
            if s.failures >= self.max_failures and s.unready_since is None:
                s.unready_since = self.clock()

    def _problems(self, extra: float) -> list[str]:
        """What is wrong for at least ``extra`` seconds beyond the readiness thresholds."""
        now = self.clock()
        out = []
        with self._lock:
            for name, s in sorted(self._streaks.items()):
                if s.unready_since is not None and now - s.unready_since >= extra:
                    out.append(f"backbone {name!r}: the last {s.failures} forward passes failed (last: {s.last_error})")
            for name, start in sorted(self._running.values()):
                if now - start > self.max_forward + extra:
                    out.append(
                        f"backbone {name!r}: a forward pass has been running for {now - start:.1f} s "
                        f"(limit max_forward_seconds={self.max_forward:g})"
                    )
        return out

    def failing_backbones(self) -> list[str]:
        """Backbones whose failure streak makes the process unready and that have no forward running."""
        with self._lock:
            busy = {name for name, _ in self._running.values()}
            return sorted(n for n, s in self._streaks.items() if s.unready_since is not None and n not in busy)

    def not_ready(self) -> str | None:
        """Why this process should get no traffic now, or None."""
        problems = self._problems(0.0)
        return "; ".join(problems) if problems else None

    def not_live(self) -> str | None:
        """Why this process should be restarted, or None."""
        problems = self._problems(self.grace)
        return "; ".join(problems) + f" (for over liveness_grace_seconds={self.grace:g})" if problems else None
