"""The ``rewardserve`` command: serve, demo, train-head, eval-rm, …"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _cmd_train_head(a: argparse.Namespace) -> int:
    from .training.heads import TrainConfig, train_head

    cfg = TrainConfig(
        data=a.data, out=a.out, backbone=a.backbone, head=a.head, hidden=a.hidden, seed=a.seed,
        max_length=a.max_length, balance_length=a.balance_length, length_penalty=a.length_penalty, limit=a.limit, name=a.name,
        max_epochs=a.max_epochs, val_fraction=a.val_fraction, lr=a.lr,
        **({"weight_decays": tuple(a.weight_decay)} if a.weight_decay else {}),
    )
    card = train_head(cfg)
    print(json.dumps({k: card[k] for k in ("name", "train_accuracy", "validation_accuracy", "hyperparameters")}, indent=2))
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from .config import check_exposure, load_settings

    settings = load_settings(a.config, host=a.host, port=a.port)
    if not a.allow_unauthenticated:
        check_exposure(settings)  # before anything heavy is imported: a refusal is immediate
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, exit_on_load_failure=True)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=a.log_level,
                            timeout_graceful_shutdown=a.graceful_timeout, access_log=False,
                            timeout_keep_alive=settings.keep_alive_seconds)
    DrainingServer(config, app.state.rs, a.drain_seconds).run()
    return 0


def DrainingServer(config, state, drain_seconds: float):
    """uvicorn.Server that, on SIGTERM/SIGINT, turns /readyz to 503 at once and keeps serving for
    ``drain_seconds`` (so load balancers stop sending) before uvicorn's graceful shutdown, which
    finishes every in-flight request. A second signal exits at once."""
    import threading

    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if state.draining or drain_seconds <= 0:
                state.draining = True
                return super().handle_exit(sig, frame)
            state.draining = True
            logging.getLogger("rewardserve").warning("signal %s: draining for %.1f s, then shutting down", sig, drain_seconds)
            threading.Timer(drain_seconds, super().handle_exit, args=(sig, None)).start()

    return _Server(config)


DEFAULT_PROMPTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prompts.jsonl.gz"
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


DEMO_SET = "demo"


def _demo_calibrate(a: argparse.Namespace, url: str) -> None:
    """Reference rewards for the example prompts (and a few from the prompt file) from base-policy
    samples, into reference set ``demo``, so the example scores are LSC against real references.
    Resumable: a second demo on the same store skips prompts already calibrated."""
    import time

    from .calibration import CalibrationConfig, calibrate
    from .datasets import load_prompts

    prompts = list({json.dumps(it["prompt"]): it["prompt"] for it in EXAMPLE_ITEMS}.values())
    if Path(a.prompts).exists():
        prompts += load_prompts(a.prompts, limit=2)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration-prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    print(f"calibrating: {len(prompts)} prompts × {a.calibration_samples} base-policy samples (SmolLM2-135M-Instruct) "
          f"into reference set {DEMO_SET!r} ...", file=sys.stderr)
    t0 = time.perf_counter()
    report = calibrate(CalibrationConfig(prompts=str(out / "calibration-prompts.jsonl"), url=url, samples=a.calibration_samples,
                                         max_new_tokens=64, reference_set=DEMO_SET, log=str(out / "calibration.jsonl")))
    print(f"calibrated {report.calibrated} prompts ({report.skipped} already were) in {time.perf_counter() - t0:.1f} s; "
          f"each reference is the 0.85-quantile of its samples' rewards\n", file=sys.stderr)


def _cmd_demo(a: argparse.Namespace) -> int:
    """Start the service on the embedded default (or --config), calibrate references for the example
    prompts, score example pairs against them and print the JSON, then run a short RLHF session
    against it and print where its report is."""
    import time

    from .service_process import ServiceProcess

    t0 = time.perf_counter()
    with ServiceProcess(config=a.config, port=a.port) as svc:
        import httpx

        body: dict = {"items": EXAMPLE_ITEMS}
        if a.calibration_samples > 0:
            _demo_calibrate(a, svc.url)
            body["reference_set"] = DEMO_SET
        r = httpx.post(f"{svc.url}/v1/score", json=body, timeout=60)
        r.raise_for_status()
        print(json.dumps(r.json(), indent=2))
        sources = sorted({s for res in r.json()["results"] for s in res["reference_source"].values()})
        print(f"\nscored by the service at {svc.url} (ready {svc.startup_seconds:.1f} s after start); "
              f"transformed = log σ(raw − reference), references from set {body.get('reference_set', 'default')!r} "
              f"(reference_source: {', '.join(sources)})", file=sys.stderr)
        if a.rlhf_steps > 0:
            from rewardclient.trainer import RLHFConfig, run_rlhf

            prompts = a.prompts
            if not Path(prompts).exists():  # no data folder: a few built-in prompts
                prompts = str(Path(a.out_dir) / "demo-prompts.jsonl")
                Path(a.out_dir).mkdir(parents=True, exist_ok=True)
                Path(prompts).write_text("".join(json.dumps(it["prompt"]) + "\n" for it in EXAMPLE_ITEMS[::2]))

            print(f"\nRLHF: {a.rlhf_steps} GRPO steps of SmolLM2-135M-Instruct against {svc.url} ...", file=sys.stderr)
            summary = run_rlhf(RLHFConfig(url=svc.url, prompts=prompts, steps=a.rlhf_steps, out_dir=a.out_dir,
                                          reference_set=body.get("reference_set")))
            last = summary["last"]
            print(json.dumps({"rlhf": {k: summary[k] for k in ("utility", "steps", "wall_seconds")},
                              "last_step": {k: v for k, v in last.items() if k.startswith("rewardserve/") or k == "kl"}}, indent=2))
            print(f"\nreport: {Path(summary['out_dir']).resolve() / 'report.md'}", file=sys.stderr)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


def _cmd_eval_rm(a: argparse.Namespace) -> int:
    import asyncio

    from .config import load_settings
    from .evaluation import eval_rm, update_card

    settings = load_settings(a.config)
    result = asyncio.run(eval_rm(settings, a.model, a.data, a.limit, a.bootstrap, a.scores_out))
    print(json.dumps(result, indent=2))
    if a.update_card:
        print(f"card updated: {update_card(settings, a.model, result, a.update_card)}", file=sys.stderr)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from .calibration import CalibrationConfig, calibrate

    cfg = CalibrationConfig(
        prompts=a.prompts, url=a.url, policy=a.policy, samples=a.samples, quantile=a.quantile, models=a.models,
        temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens, batch_prompts=a.batch_prompts,
        seed=a.seed, split=a.split, limit=a.limit, reference_response=a.reference_response, log=a.log,
        api_key=a.api_key or os.environ.get("REWARDSERVE_API_KEY"), device=a.device, reference_set=a.reference_set,
    )
    print(json.dumps(calibrate(cfg).to_dict(), indent=2))
    return 0


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
        groups: dict[tuple[str, str], list] = {}
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
        print(json.dumps({"reference_sets": [{"name": n, "models": m, "references": sum(m.values())} for n, m in sets.items()
                                             if a.reference_set in (None, n)]}, indent=2))
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


def _cmd_rlhf(a: argparse.Namespace) -> int:
    import dataclasses

    from rewardclient.trainer import RLHFConfig, run_rlhf

    names = {f.name for f in dataclasses.fields(RLHFConfig)} - {"extra"}
    cfg = RLHFConfig(**{k: v for k, v in vars(a).items() if k in names and v is not None})
    cfg.api_key = cfg.api_key or os.environ.get("REWARDSERVE_API_KEY")
    summary = run_rlhf(cfg)
    print(json.dumps({k: summary[k] for k in ("utility", "steps", "wall_seconds", "out_dir")}, indent=2))
    print(f"report: {summary['out_dir']}/report.md", file=sys.stderr)
    return 0


def _cmd_experiment(a: argparse.Namespace) -> int:
    import dataclasses

    from .experiments.best_of_k import run_best_of_k
    from .experiments.rlhf import run_rlhf_experiment

    names = {f.name for f in dataclasses.fields(a.config_cls)}
    cfg = a.config_cls(**{k: v for k, v in vars(a).items() if k in names and v is not None})
    if a.experiment == "kl-curves":
        from .experiments.kl_curves import run_kl_curves

        result = run_kl_curves(cfg, a.max_generation_seconds)
        if not result["complete"]:
            print(f"pool: {result['prompts_done']}/{cfg.n_prompts} prompts in {result['pool']}; "
                  "run the same command again to continue", file=sys.stderr)
            return 3
        print((Path(cfg.out_dir) / "kl_curves.md").read_text(encoding="utf-8"))
        print(f"results: {cfg.out_dir}/kl_curves.json ({result['wall_seconds_this_run']:.0f} s)", file=sys.stderr)
        return 0
    result = run_best_of_k(cfg) if a.experiment == "best-of-k" else run_rlhf_experiment(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text(encoding="utf-8"))
    print(f"results: {cfg.out_dir}/results.json ({result['wall_seconds_this_run']:.0f} s)", file=sys.stderr)
    return 0


def _add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        t = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if typing.get_origin(t) in (list, typing.Union) or str(t).startswith("list") or "list[" in str(t):
            inner = [x for a in typing.get_args(t) for x in (typing.get_args(a) or (a,)) if x is not type(None)]
            elem = inner[0] if inner and inner[0] in (int, float) else str
            parser.add_argument(flag, nargs="+", type=elem, default=None, help=f"default: {default}")
            continue
        base = next((x for x in typing.get_args(t) if x is not type(None)), t)
        parser.add_argument(flag, type=base if base in (int, float, str) else str, default=None, help=f"default: {default}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewardserve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--config", help="YAML config (default: the embedded default)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish in-flight requests on SIGTERM")
    s.add_argument("--drain-seconds", type=float, default=1.0,
                   help="after SIGTERM: /readyz answers 503 and requests are still served this long before shutdown")
    s.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve on a non-loopback host without API keys (refused otherwise; config allow_unauthenticated)")
    s.set_defaults(func=_cmd_serve)

    d = sub.add_parser("demo", help="start the service, score example pairs, print the JSON, stop")
    d.add_argument("--config", help="YAML config (default: the embedded default)")
    d.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    d.add_argument("--calibration-samples", type=int, default=4,
                   help="base-policy samples per prompt for the example prompts' references (0: no calibration)")
    d.add_argument("--rlhf-steps", type=int, default=3, help="GRPO steps of the RLHF part (0: skip it)")
    d.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="prompt file for the RLHF part")
    d.add_argument("--out-dir", default="runs/demo", help="where the RLHF run writes its report")
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
    t.add_argument("--length-penalty", type=float, default=0.0,
                   help="λ: add λ·corr(reward, log length)² per batch to the loss (discourages a length counter)")
    t.add_argument("--limit", type=int, help="use only the first N pairs")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_train_head)

    e = sub.add_parser("eval-rm", help="pairwise accuracy of a configured model on preference pairs")
    e.add_argument("--model", required=True)
    e.add_argument("--config", help="YAML config (default: the embedded default)")
    e.add_argument("--data", required=True, help="pairs: JSONL(.gz) with prompt/chosen/rejected, or a hub dataset id")
    e.add_argument("--limit", type=int, help="use only the first N pairs")
    e.add_argument("--out", help="also write the result as JSON here")
    e.add_argument("--update-card", metavar="KEY", help="store the result in the model's card under evaluation.KEY")
    e.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals (0: none)")
    e.add_argument("--scores-out", help="also save the per-pair rewards here (.npz)")
    e.set_defaults(func=_cmd_eval_rm)

    c = sub.add_parser("calibrate", help="per-prompt reference rewards from base-policy samples, stored via the service")
    c.add_argument("--prompts", required=True, help="prompts.jsonl(.gz) (objects with 'prompt') or JSONL of strings")
    c.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    c.add_argument("--policy", help="base policy: folder, hub id or .gguf file (default: SmolLM2-135M-Instruct)")
    c.add_argument("--samples", type=int, default=8, help="K samples per prompt")
    c.add_argument("--quantile", type=float, default=0.85, help="Q: the reference is the Q-quantile of the K rewards")
    c.add_argument("--models", nargs="+", help="models to calibrate (default: all served)")
    c.add_argument("--temperature", type=float, default=0.7)
    c.add_argument("--top-p", type=float, default=0.9)
    c.add_argument("--max-new-tokens", type=int, default=96)
    c.add_argument("--batch-prompts", type=int, default=4, help="prompts per generate call")
    c.add_argument("--split", help="only prompts of this split (train/test) when the file has one")
    c.add_argument("--limit", type=int, help="only the first N prompts")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu")
    c.add_argument("--reference-response", help="instead of sampling: r_ref(x) = r(x, this text), e.g. a refusal")
    c.add_argument("--log", help="JSONL log of sample rewards (default: under ~/.cache/rewardserve/calibration)")
    c.add_argument("--api-key", help="API key (default: $REWARDSERVE_API_KEY)")
    c.add_argument("--reference-set", default="default",
                   help="the reference set to store into: one set per base policy (default: 'default')")
    c.set_defaults(func=_cmd_calibrate)

    r = sub.add_parser("references", help="export or import stored references as JSON Lines; list or delete reference sets")
    r.add_argument("action", choices=["export", "import", "list", "delete"])
    r.add_argument("file", nargs="?", help="export/import: JSONL file ('-': stdout / stdin)")
    r.add_argument("--reference-set", help="export/list: only this set; import: into this set (default: each row's "
                                           "'reference_set', else 'default'); delete: the set to delete")
    r.add_argument("--store", help="store URL (default: the config's references.store)")
    r.add_argument("--config", help="YAML config (default: the embedded default)")
    r.set_defaults(func=_cmd_references)

    from rewardclient.trainer.grpo import RLHFConfig

    h = sub.add_parser("rlhf", help="RLHF (TRL GRPO, KL-regularised) of a policy against a running service")
    _add_dataclass_args(h, RLHFConfig)
    h.set_defaults(func=_cmd_rlhf)

    from .experiments.best_of_k import BestOfKConfig
    from .experiments.rlhf import RLHFExperimentConfig

    x = sub.add_parser("experiment", help="the LSC paper's claims at small scale: best-of-k selection, RLHF runs")
    xs = x.add_subparsers(dest="experiment", required=True)
    xb = xs.add_parser("best-of-k", help="pick the best of k base samples by raw_sum vs lsc_sum (docs/experiments.md)")
    _add_dataclass_args(xb, BestOfKConfig)
    xb.set_defaults(func=_cmd_experiment, config_cls=BestOfKConfig)
    xr = xs.add_parser("rlhf", help="GRPO runs, raw_sum vs lsc_sum × KL strengths × seeds (needs best-of-k's output)")
    _add_dataclass_args(xr, RLHFExperimentConfig)
    xr.set_defaults(func=_cmd_experiment, config_cls=RLHFExperimentConfig)
    from .experiments.kl_curves import KLCurvesConfig

    xk = xs.add_parser("kl-curves", help="proxy-optimised selection along the KL axis, judged by gold reward models "
                                         "(resumable; docs/experiments.md)")
    _add_dataclass_args(xk, KLCurvesConfig)
    xk.add_argument("--max-generation-seconds", type=float, default=None,
                    help="stop generating after this long (exit 3); the same command continues the pool")
    xk.set_defaults(func=_cmd_experiment, config_cls=KLCurvesConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that spin after each parallel region steal the cores that the event loop and
    # the tokenizer need; passive waiting measured faster on CPU serving (bench/README.md)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"rewardserve {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
