"""Verifiable checks (``kind: verifier``): rule-based rewards in [0, 1], run in a process pool.

The engine API (what the verifier backbone of the registry wraps)::

    from rewardserve.verifiers import (
        CheckConfig, VerifierBackboneConfig, VerifierEngine, CheckItem, CheckResult,
    )

    cfg = VerifierBackboneConfig(kind="verifier", timeout_s=5, workers=2, models={
        "correct": CheckConfig(verifier="math"),
        "formatted": CheckConfig(verifier="regex", pattern=r"(?s)^<think>.*</think>\\s*\\S"),
    })
    engine = VerifierEngine.from_config(cfg, metrics=metrics)   # or VerifierEngine(models, workers, timeout_s)
    engine.start()                       # sync: starts the workers, waits until each has loaded the checks
    engine.describe()      # {model: {kind, verifier, needs: ["label"] | [], epsilon, missing_label, timeout_s}}
    engine.missing_labels(items, models) # [(item index, model)] lacking a label the model needs
    results = await engine.score(items, models=None)   # {model: [CheckResult(score, warning)] in item order}
    engine.stop()                        # sync: kills the workers

- ``CheckItem(response: str, label: Any = None, prompt: Any = None)``; ``label`` None means "no label".
- ``CheckResult(score: float | None, warning: str | None = None)``: ``score`` in [0, 1] is ``raw``;
  ``None`` (``.skipped``) when the item had no label under ``missing_label: skip``: leave the model
  out of that item's aggregate. A timeout, exception or crashed worker gives ``score`` 0.0 and a
  warning naming the model and the reason; ``score`` never raises for a check's failure.
- ``score`` raises ``rewardserve.errors.InvalidInput`` (422) naming the item and the model when an
  item lacks a label that a ``missing_label: error`` model needs (check first with
  ``missing_labels`` to report every one), ``KeyError`` for a model it does not serve, and
  ``rewardserve.errors.NotReady`` before ``start()`` or after ``stop()`` (checks in flight at ``stop()``
  score 0 with the warning "the verifier pool stopped"). Call ``score`` from one event loop.
- ``transformed = rewardserve.lsc.check_utility(raw, cfg.models[m].epsilon)`` = log(ε + (1 − ε)·raw);
  no reference applies (``reference_source: "not_applicable"``).
- Metrics (``rewardserve.metrics.Metrics``): ``rewardserve_check_seconds{model}``,
  ``rewardserve_check_timeouts{model}``, ``rewardserve_check_failures{model,reason}``.

``VerifierEngine(models: Mapping[str, CheckConfig], workers=2, timeout_s=5.0, *, metrics=None,
chunk_size=None, grace_s=None, start_method="forkserver")``: ``chunk_size`` None picks
min(16, ⌈pairs / (2·workers)⌉) (model, item) pairs per task; ``grace_s`` (default 0.2·timeout_s,
within [0.05, 1] s) is how long past ``timeout_s`` a check stuck in C code runs before its worker is
killed. See ``engine.py`` (isolation), ``worker.py`` (the timers), ``checks.py`` (the built-in
checks' semantics) and ``config.py`` (the YAML).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checks import BUILTIN_CHECKS, extract_choice, normalize_text
from .config import DEFAULT_EPSILON, CheckConfig, VerifierBackboneConfig, load_user_function

if TYPE_CHECKING:
    from .engine import CheckItem, CheckResult, VerifierEngine, settle

_ENGINE = ("CheckItem", "CheckResult", "VerifierEngine", "settle")


def __getattr__(name: str) -> Any:
    """The engine (pebble) is imported on first use, so that the config (which reads ``.config``)
    loads where only the server's command line is installed."""
    if name in _ENGINE:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN_CHECKS",
    "DEFAULT_EPSILON",
    "CheckConfig",
    "CheckItem",
    "CheckResult",
    "VerifierBackboneConfig",
    "VerifierEngine",
    "extract_choice",
    "load_user_function",
    "normalize_text",
    "settle",
]
