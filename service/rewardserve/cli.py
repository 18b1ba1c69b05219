"""The rewardserve command line: serve reward models over HTTP and manage reference sets, plus the
commands of the installed packages that add their own (entry point group ``rewardserve.commands``:
rewardlab's demo, train-head, eval-rm, calibrate, rlhf, experiment). Options whose settings are a
config class's fields are generated from the fields' descriptions (cli_options.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib.metadata import entry_points
from types import FrameType
from typing import TYPE_CHECKING

from .cli_options import CONFIG_HELP, add_options, command

if TYPE_CHECKING:
    import uvicorn

    from .state import AppState


def _cmd_serve(a: argparse.Namespace) -> int:
    from .config import check_exposure, load_settings

    # first, so that --log-level debug shows what the settings ignore (Kubernetes service links)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # flags > REWARDSERVE_* environment > config file > defaults
    settings = load_settings(a.config, host=a.host, port=a.port, allow_unauthenticated=a.allow_unauthenticated)
    if not settings.allow_unauthenticated:
        check_exposure(settings)  # before anything heavy is imported: a refusal is immediate
    import uvicorn

    from .app import create_app

    app = create_app(settings, exit_on_load_failure=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=a.log_level,
        timeout_graceful_shutdown=a.graceful_timeout,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]  # uvicorn hands it to call_later: a float works
    )
    DrainingServer(config, app.state.rs, a.drain_seconds).run()
    return 0


def DrainingServer(config: uvicorn.Config, state: AppState, drain_seconds: float) -> uvicorn.Server:
    """uvicorn.Server that, on SIGTERM/SIGINT, turns /readyz to 503 at once and keeps serving for
    ``drain_seconds`` (so load balancers stop sending) before uvicorn's graceful shutdown, which
    finishes every in-flight request. A second signal exits at once."""
    import threading

    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if state.draining or drain_seconds <= 0:
                state.draining = True
                return super().handle_exit(sig, frame)
            state.draining = True
            logging.getLogger("rewardserve").warning(
                "signal %s: draining for %.1f s, then shutting down", sig, drain_seconds
            )
            threading.Timer(drain_seconds, super().handle_exit, args=(sig, None)).start()

    return _Server(config)


def _store_url(a: argparse.Namespace) -> str:
    from .config import load_settings

    return a.store or load_settings(a.config).references.store


def _cmd_references(a: argparse.Namespace) -> int:
    import asyncio

    from .references import DEFAULT_SET, Reference, check_set_name, open_store

    if a.reference_set is not None:
        check_set_name(a.reference_set)
    if a.action in ("export", "import") and not a.file:
        raise ValueError(f"references {a.action} needs a FILE ('-': stdout / stdin)")
    if a.action == "delete" and a.reference_set is None:
        raise ValueError("references delete needs --reference-set NAME")

    async def export() -> int:
        store = open_store(_store_url(a))
        try:
            rows = await store.all_rows(a.reference_set)
        finally:
            await store.close()
        out = open(a.file, "w", encoding="utf-8") if a.file != "-" else sys.stdout
        for rset, model, fp, ref in rows:
            out.write(json.dumps({"reference_set": rset, "model": model, "fingerprint": fp, **ref.to_dict()}) + "\n")
        if out is not sys.stdout:
            out.close()
        print(f"exported {len(rows)} references", file=sys.stderr)
        return 0

    async def import_() -> int:
        # rows without 'reference_set' (exports of earlier versions) go to set 'default';
        # --reference-set puts every row into that set
        groups: dict[tuple[str, str], list[tuple[str, Reference]]] = {}
        src = open(a.file, encoding="utf-8") if a.file != "-" else sys.stdin
        for lineno, line in enumerate(src, 1):
            if line.strip():
                row = json.loads(line)
                try:
                    rset = check_set_name(a.reference_set or row.pop("reference_set", DEFAULT_SET))
                    row.pop("reference_set", None)
                    model, fp = row.pop("model"), row.pop("fingerprint")
                    groups.setdefault((rset, model), []).append((fp, Reference(**row)))
                except (KeyError, TypeError) as e:
                    raise ValueError(f"{a.file}:{lineno}: not a reference row ({e})") from None
        store = open_store(_store_url(a))
        try:
            for (rset, model), entries in groups.items():
                await store.put_many(model, entries, reference_set=rset)
        finally:
            await store.close()
        print(f"imported {sum(map(len, groups.values()))} references", file=sys.stderr)
        return 0

    async def list_() -> int:
        store = open_store(_store_url(a))
        try:
            sets = await store.sets()
        finally:
            await store.close()
        print(
            json.dumps(
                {
                    "reference_sets": [
                        {"name": n, "models": m, "references": sum(m.values())}
                        for n, m in sets.items()
                        if a.reference_set in (None, n)
                    ]
                },
                indent=2,
            )
        )
        return 0

    async def delete() -> int:
        store = open_store(_store_url(a))
        try:
            n = await store.delete_set(a.reference_set)
        finally:
            await store.close()
        print(f"deleted {n} references of set {a.reference_set!r}", file=sys.stderr)
        return 0

    return asyncio.run({"export": export, "import": import_, "list": list_, "delete": delete}[a.action]())


DESCRIPTION = (
    "Reward-model serving for RLHF: serve reward models over HTTP (raw, LSC-transformed and aggregate "
    "rewards) and manage reference sets; with rewardlab installed, also calibrate per-prompt references "
    "from base-policy samples, train reward heads, run RLHF against the service and reproduce the LSC "
    "paper's experiments."
)


def build_parser() -> argparse.ArgumentParser:
    from .config import ReferencesConfig, Settings

    p = argparse.ArgumentParser(prog="rewardserve", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = command(sub, "serve", "run the HTTP service (POST /v1/score, references, models, health, metrics)")
    s.add_argument("--config", help=CONFIG_HELP)
    add_options(
        s,
        Settings,
        only=("host", "port"),
        default_texts={"host": "the config's host, else 127.0.0.1", "port": "the config's port, else 8000"},
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level of the service and uvicorn (default: info)",
    )
    s.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to finish in-flight requests on SIGTERM (default: 30)",
    )
    s.add_argument(
        "--drain-seconds",
        type=float,
        default=1.0,
        help="after SIGTERM: /readyz answers 503 and requests are still served this long before shutdown (default: 1)",
    )
    add_options(s, Settings, only=("allow_unauthenticated",))
    s.set_defaults(func=_cmd_serve)

    r = command(sub, "references", "export or import stored references as JSON Lines; list or delete reference sets")
    r.add_argument(
        "action",
        choices=["export", "import", "list", "delete"],
        help="export: write references as JSON Lines; import: read them; list: the sets and their "
        "counts; delete: a whole set",
    )
    r.add_argument("file", nargs="?", help="export/import: JSON Lines file ('-': stdout / stdin)")
    r.add_argument(
        "--reference-set",
        help="export/list: only this set; import: into this set (default: each row's "
        "'reference_set', else 'default'); delete: the set to delete",
    )
    add_options(r, ReferencesConfig, only=("store",), default_texts={"store": "the config's references.store"})
    r.add_argument("--config", help=CONFIG_HELP)
    r.set_defaults(func=_cmd_references)

    failed = ""
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            ep.load()(sub)
        except ImportError as e:  # a broken plugin must not take `serve` down with it
            failed += f" ({ep.value} did not load: {e})"
    for name in LAB_COMMANDS:
        if name not in sub.choices:
            x = sub.add_parser(name, help="(needs rewardlab: pip install ./lab)", add_help=False)
            x.set_defaults(func=_needs_lab, load_error=failed)
    return p


COMMANDS_GROUP = "rewardserve.commands"  # entry points: functions that add subcommands to the subparsers
LAB_COMMANDS = ("demo", "train-head", "eval-rm", "calibrate", "rlhf", "experiment")  # rewardlab's


def _needs_lab(a: argparse.Namespace) -> int:
    print(
        f"rewardserve {a.command}: this command comes with rewardlab, the research and training tools, which is not "
        f"installed{a.load_error}: pip install rewardlab (from a checkout of the repository: pip install ./lab)",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that spin after each parallel region steal the cores that the event loop and
    # the tokenizer need; passive waiting measured faster on CPU serving (bench/README.md)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not _needs_lab:  # a missing command's arguments are not known here
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"rewardserve {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
