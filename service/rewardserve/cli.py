"""The ``rewardserve`` command: serve, demo, train-head, eval-rm, …"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _cmd_train_head(a: argparse.Namespace) -> int:
    from .training.heads import TrainConfig, train_head

    cfg = TrainConfig(
        data=a.data, out=a.out, backbone=a.backbone, head=a.head, hidden=a.hidden, seed=a.seed,
        max_length=a.max_length, balance_length=a.balance_length, limit=a.limit, name=a.name,
        max_epochs=a.max_epochs, val_fraction=a.val_fraction, lr=a.lr,
        **({"weight_decays": tuple(a.weight_decay)} if a.weight_decay else {}),
    )
    card = train_head(cfg)
    print(json.dumps({k: card[k] for k in ("name", "train_accuracy", "validation_accuracy", "hyperparameters")}, indent=2))
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .config import load_settings

    settings = load_settings(a.config, host=a.host, port=a.port)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, exit_on_load_failure=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=a.log_level,
                timeout_graceful_shutdown=a.graceful_timeout, access_log=False)
    return 0


EXAMPLE_ITEMS = [
    {"id": "helpful", "prompt": [{"role": "user", "content": "How do I boil an egg?"}],
     "response": "Place the egg in a pot of cold water, bring it to a boil, then simmer for 9 minutes "
                 "and cool it in cold water before peeling."},
    {"id": "unhelpful", "prompt": [{"role": "user", "content": "How do I boil an egg?"}],
     "response": "I don't know."},
    {"id": "harmless", "prompt": "How can I hurt my neighbour's dog?",
     "response": "I can't help with hurting an animal. If the dog is causing problems, talk to your "
                 "neighbour or contact animal control."},
    {"id": "harmful", "prompt": "How can I hurt my neighbour's dog?",
     "response": "Put some chocolate and grapes in its food bowl when nobody is watching."},
]


def _cmd_demo(a: argparse.Namespace) -> int:
    """Start the service on the embedded default (or --config), score example pairs, print the JSON."""
    from .service_process import ServiceProcess

    with ServiceProcess(config=a.config, port=a.port) as svc:
        import httpx

        r = httpx.post(f"{svc.url}/v1/score", json={"items": EXAMPLE_ITEMS}, timeout=60)
        r.raise_for_status()
        print(json.dumps(r.json(), indent=2))
        print(f"\nscored by the service at {svc.url} (started {svc.startup_seconds:.1f} s before)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewardserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--config", help="YAML config (default: the embedded default)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish in-flight requests on SIGTERM")
    s.set_defaults(func=_cmd_serve)

    d = sub.add_parser("demo", help="start the service, score example pairs, print the JSON, stop")
    d.add_argument("--config", help="YAML config (default: the embedded default)")
    d.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train-head", help="train a Bradley-Terry reward head on a frozen encoder")
    t.add_argument("--data", required=True, help="pairs: JSONL(.gz) with prompt/chosen/rejected, or a hub dataset id")
    t.add_argument("--out", required=True, help="output folder for <name>.safetensors and <name>.json")
    t.add_argument("--name", help="model name (default: the output folder's name)")
    t.add_argument("--backbone", help="encoder folder or hub id (default: bundled all-MiniLM-L6-v2)")
    t.add_argument("--head", choices=["linear", "mlp"], default="mlp")
    t.add_argument("--hidden", type=int, default=256, help="MLP hidden units")
    t.add_argument("--weight-decay", type=float, nargs="+", help="weight decays to select from on validation")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--max-epochs", type=int, default=200)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--max-length", type=int, default=256)
    t.add_argument("--balance-length", action="store_true",
                   help="weight pairs so that 'chosen longer' and 'chosen shorter' count equally")
    t.add_argument("--limit", type=int, help="use only the first N pairs")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_train_head)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"rewardserve {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
