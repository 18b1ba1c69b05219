"""rewardserve benchmark: ``python -m bench`` (see bench/README.md).

Importing this package is cheap (the load generator ``python -m bench.load`` imports it too); the
runner, torch and the service are imported only when a benchmark runs.
"""

from __future__ import annotations


def run_benchmark(*args, **kwargs) -> dict:
    """Run the benchmark and return its results (also written as JSON); see ``bench.runner.run_benchmark``."""
    from .runner import run_benchmark as _run

    return _run(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """The command line of ``python -m bench`` (what ``rewardserve bench`` delegates to);
    ``python -m bench grpo …`` runs the GRPO benchmark (``bench/grpo.py``), ``python -m bench checks …``
    the verifier checks' one (``bench/checks.py``), ``python -m bench peer …`` the comparison with vLLM
    (``bench/peer.py``)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["grpo"]:
        from .grpo import main as _grpo

        return _grpo(args[1:])
    if args[:1] == ["checks"]:
        from .checks import main as _checks

        return _checks(args[1:])
    if args[:1] == ["peer"]:
        from .peer import main as _peer

        return _peer(args[1:])
    from .runner import main as _main

    return _main(argv)


__all__ = ["main", "run_benchmark"]
