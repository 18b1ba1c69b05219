"""Imported by the workers' fork server (``set_forkserver_preload``): loads math-verify and sympy and
runs a few math checks once, so that every worker forked from it, a replaced one too, starts warm."""

from __future__ import annotations

from .checks import warm_math

warm_math()
