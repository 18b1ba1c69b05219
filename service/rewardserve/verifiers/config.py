"""The configuration of a verifier backbone (``kind: verifier``), validated at load.

```yaml
backbones:
  checks:
    kind: verifier
    timeout_s: 5            # per item, hard
    workers: 2              # processes
    models:
      correct:    {verifier: math}                                   # label: the reference answer
      formatted:  {verifier: regex, pattern: "(?s)^<think>.*</think>\\s*\\S", mode: search}
      valid_json: {verifier: json}                                   # label optional: a JSON Schema
      choice:     {verifier: choice}                                 # label: "B"
      mine:       {verifier: "my_pkg.rewards:compute_score", epsilon: 0.01, missing_label: skip}
```

At load, a regex that does not compile, an unknown verifier and a user function that cannot be
imported (or is not callable) are errors that name the model. Options other than the fields below
are kept and passed to the check as keyword arguments (``float_rounding`` and ``max_digits``, a
positive integer or null, for ``math``,
``letters`` for ``choice``, anything for a user function).
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .checks import BUILTIN_CHECKS, NEEDS_LABEL, CheckFunction

DEFAULT_EPSILON = 1e-3
_USER_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_user_function(ref: str) -> CheckFunction:
    """Import ``pkg.module:function`` (from the operator's config only, never from a request)."""
    if not _USER_FUNCTION.match(ref):
        raise ValueError(
            f"unknown verifier {ref!r}: expected one of {', '.join(BUILTIN_CHECKS)} or 'package.module:function'"
        )
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an ImportError, or whatever the module raises while it loads
        raise ValueError(f"verifier {ref!r}: cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"verifier {ref!r}: module {module_name!r} has no callable {attr!r}")
    result: CheckFunction = fn
    return result


class CheckConfig(BaseModel):
    """One check served as a model. Fields other than these are options passed to the check."""

    model_config = ConfigDict(extra="allow", frozen=True)

    verifier: str = Field(
        description="math | exact_match | regex | json | choice, or 'package.module:function' (a user's "
        "verl-style function f(solution_str, ground_truth, **options) -> float | {'score': float, ...})"
    )
    pattern: str | None = Field(None, description="regex only: the pattern (Python re syntax)")
    mode: Literal["search", "full"] = Field(
        "search", description="regex only: search (a match anywhere) or full (the whole response)"
    )
    epsilon: float = Field(
        DEFAULT_EPSILON,
        gt=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="transformed = log(ε + (1 − ε)·raw): a failed check contributes log ε to the AND",
    )
    missing_label: Literal["error", "skip"] = Field(
        "error",
        description="an item without the label this check needs: error (422 naming the item and the model) or "
        "skip (the model is left out of that item's aggregate)",
    )
    needs_label: bool | None = Field(
        None,
        description="whether every item must carry a label; default: math, exact_match, choice and user "
        "functions do, regex and json do not",
    )

    @field_validator("verifier")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BUILTIN_CHECKS:
            load_user_function(v)  # raises a clear error when it cannot be imported
        return v

    @model_validator(mode="after")
    def _pattern(self) -> CheckConfig:
        if self.verifier == "regex":
            if self.pattern is None:
                raise ValueError("a regex verifier needs 'pattern'")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"pattern {self.pattern!r} does not compile: {e}") from None
        elif self.pattern is not None:
            raise ValueError(f"'pattern' is for the regex verifier, not {self.verifier!r}")
        if self.verifier == "math" and self.model_extra and "max_digits" in self.model_extra:
            limit = self.model_extra["max_digits"]
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise ValueError(f"max_digits must be a positive integer or null (no limit), not {limit!r}")
        return self

    @property
    def is_builtin(self) -> bool:
        return self.verifier in BUILTIN_CHECKS

    @property
    def label_required(self) -> bool:
        """Whether every item must carry a label for this check."""
        if self.needs_label is not None:
            return self.needs_label
        return NEEDS_LABEL.get(self.verifier, True)

    def options(self) -> dict[str, Any]:
        """The keyword arguments the check is called with: ``pattern``/``mode`` for regex, plus every
        extra key of the config."""
        opts: dict[str, Any] = dict(self.model_extra or {})
        if self.verifier == "regex":
            opts.update(pattern=self.pattern, mode=self.mode)
        return opts


class VerifierBackboneConfig(BaseModel):
    """A backbone of checks: one process pool (``workers`` processes) for all its models."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["verifier"] = "verifier"
    timeout_s: float = Field(
        5.0, gt=0, allow_inf_nan=False, description="per item, hard: past it the check is killed and scores 0"
    )
    workers: int = Field(2, gt=0, le=256, description="worker processes")
    models: dict[str, CheckConfig]

    @model_validator(mode="after")
    def _some(self) -> VerifierBackboneConfig:
        if not self.models:
            raise ValueError("a verifier backbone needs at least one model")
        return self
