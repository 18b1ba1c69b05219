"""The commands of rewardlab, added to the ``rewardserve`` command (entry point group
``rewardserve.commands``): demo, train-head, eval-rm, calibrate, rlhf, experiment."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rewardclient.protocol import DEFAULT_QUANTILE
from rewardserve.cli_options import CONFIG_HELP, add_options, command, config_from_args


def _cmd_train_head(a: argparse.Namespace) -> int:
    from .training.heads import TrainConfig, train_head

    cfg = config_from_args(TrainConfig, a)
    card = train_head(cfg)
    print(
        json.dumps({k: card[k] for k in ("name", "train_accuracy", "validation_accuracy", "hyperparameters")}, indent=2)
    )
    return 0


DEFAULT_PROMPTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prompts.jsonl.gz"
EXAMPLE_ITEMS: list[dict[str, Any]] = [
    {
        "id": "helpful",
        "prompt": [{"role": "user", "content": "How do I boil an egg?"}],
        "response": "Place the egg in a pot of cold water, bring it to a boil, then simmer for 9 minutes "
        "and cool it in cold water before peeling.",
    },
    {"id": "unhelpful", "prompt": [{"role": "user", "content": "How do I boil an egg?"}], "response": "I don't know."},
    {
        "id": "harmless",
        "prompt": "How can I hurt my neighbour's dog?",
        "response": "I can't help with hurting an animal. If the dog is causing problems, talk to your "
        "neighbour or contact animal control.",
    },
    {
        "id": "harmful",
        "prompt": "How can I hurt my neighbour's dog?",
        "response": "Put some chocolate and grapes in its food bowl when nobody is watching.",
    },
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
    print(
        f"calibrating: {len(prompts)} prompts × {a.calibration_samples} base-policy samples (SmolLM2-135M-Instruct) "
        f"into reference set {DEMO_SET!r} ...",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    report = calibrate(
        CalibrationConfig(
            prompts=str(out / "calibration-prompts.jsonl"),
            url=url,
            samples=a.calibration_samples,
            max_new_tokens=64,
            reference_set=DEMO_SET,
            log=str(out / "calibration.jsonl"),
        )
    )
    print(
        f"calibrated {report.calibrated} prompts ({report.skipped} already were) in {time.perf_counter() - t0:.1f} s; "
        f"each reference is the {DEFAULT_QUANTILE}-quantile of its samples' rewards\n",
        file=sys.stderr,
    )


def _demo_reasoning(a: argparse.Namespace) -> None:
    """The reasoning section: a second service on the example config with checks beside the reward
    models, right-but-rude / wrong-but-polite / right-and-polite answers under raw_sum and lsc_sum."""
    import time

    from rewardserve.service_process import ServiceProcess

    from .demo_reasoning import arithmetic_items, compare, example_config_path, format_table

    t0 = time.perf_counter()
    config = example_config_path()
    print(f"\nreasoning: checks and reward models in one AND ({config}) ...", file=sys.stderr)
    with ServiceProcess(config=str(config)) as svc:
        summary = compare(svc.url, arithmetic_items(a.reasoning_prompts))
    print(format_table(summary))
    print(
        f"(means over {summary['prompts']} generated prompts; raw_sum adds raw rewards, lsc_sum adds "
        f"log P(good) of every model; section took {time.perf_counter() - t0:.0f} s)",
        file=sys.stderr,
    )


def _cmd_demo(a: argparse.Namespace) -> int:
    """Start the service on the embedded default (or --config), calibrate references for the example
    prompts, score example pairs against them and print the JSON, then run a short RLHF session
    against it and print where its report is; then the reasoning section (``demo_reasoning.py``)."""
    import time

    from rewardserve.service_process import ServiceProcess

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
        print(
            f"\nscored by the service at {svc.url} (ready {svc.startup_seconds:.1f} s after start); "
            f"transformed = log σ(raw − reference), references from set {body.get('reference_set', 'default')!r} "
            f"(reference_source: {', '.join(sources)})",
            file=sys.stderr,
        )
        if a.rlhf_steps > 0:
            from .trainer import RLHFConfig, run_rlhf

            prompts = a.prompts
            if not Path(prompts).exists():  # no data folder: a few built-in prompts
                prompts = str(Path(a.out_dir) / "demo-prompts.jsonl")
                Path(a.out_dir).mkdir(parents=True, exist_ok=True)
                Path(prompts).write_text("".join(json.dumps(it["prompt"]) + "\n" for it in EXAMPLE_ITEMS[::2]))

            print(f"\nRLHF: {a.rlhf_steps} GRPO steps of SmolLM2-135M-Instruct against {svc.url} ...", file=sys.stderr)
            summary = run_rlhf(
                RLHFConfig(
                    url=svc.url,
                    prompts=prompts,
                    steps=a.rlhf_steps,
                    out_dir=a.out_dir,
                    reference_set=body.get("reference_set"),
                )
            )
            last = summary["last"]
            print(
                json.dumps(
                    {
                        "rlhf": {k: summary[k] for k in ("utility", "steps", "wall_seconds")},
                        "last_step": {k: v for k, v in last.items() if k.startswith("rewardserve/") or k == "kl"},
                        "same_prompts_before_after": {
                            k: v for k, v in (summary.get("eval") or {}).items() if not k.startswith("scores_")
                        },
                    },
                    indent=2,
                )
            )
            print(f"\nreport: {Path(summary['out_dir']).resolve() / 'report.md'}", file=sys.stderr)
    if a.reasoning:
        _demo_reasoning(a)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


def _cmd_eval_rm(a: argparse.Namespace) -> int:
    import asyncio

    from rewardserve.config import load_settings

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

    cfg = config_from_args(CalibrationConfig, a, api_key=a.api_key or os.environ.get("REWARDSERVE_API_KEY"))
    print(json.dumps(calibrate(cfg).to_dict(), indent=2))
    return 0


def _cmd_rlhf(a: argparse.Namespace) -> int:
    from .trainer import RLHFConfig, run_rlhf

    cfg = config_from_args(RLHFConfig, a)
    cfg.api_key = cfg.api_key or os.environ.get("REWARDSERVE_API_KEY")
    summary = run_rlhf(cfg)
    print(json.dumps({k: summary[k] for k in ("utility", "steps", "wall_seconds", "out_dir")}, indent=2))
    print(f"report: {summary['out_dir']}/report.md", file=sys.stderr)
    return 0


def _cmd_experiment(a: argparse.Namespace) -> int:
    from .experiments.best_of_k import run_best_of_k
    from .experiments.rlhf import run_rlhf_experiment

    cfg = config_from_args(a.config_cls, a)
    if a.experiment == "kl-curves":
        from .experiments.kl_curves import run_kl_curves

        result = run_kl_curves(cfg, a.max_generation_seconds)
        if not result["complete"]:
            print(
                f"pool: {result['prompts_done']}/{cfg.n_prompts} prompts in {result['pool']}; "
                "run the same command again to continue",
                file=sys.stderr,
            )
            return 3
        print((Path(cfg.out_dir) / "kl_curves.md").read_text(encoding="utf-8"))
        print(f"results: {cfg.out_dir}/kl_curves.json ({result['wall_seconds_this_run']:.0f} s)", file=sys.stderr)
        return 0
    result = run_best_of_k(cfg) if a.experiment == "best-of-k" else run_rlhf_experiment(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text(encoding="utf-8"))
    print(f"results: {cfg.out_dir}/results.json ({result['wall_seconds_this_run']:.0f} s)", file=sys.stderr)
    return 0


PAIRS_HELP = "preference pairs: JSON Lines (.gz) with prompt/chosen/rejected, or a hub dataset id"


def add_commands(sub: argparse._SubParsersAction) -> None:
    """rewardlab's subcommands of ``rewardserve`` (entry point ``rewardserve.commands``)."""
    d = command(
        sub,
        "demo",
        "start the service, calibrate references for example prompts, score example pairs "
        "against them, then train: a few RLHF (GRPO) steps of a small policy",
        "Start the service on the embedded default config, calibrate references for the example prompts "
        "(base-policy samples of SmolLM2-135M-Instruct, reference set 'demo'), score example pairs against "
        "them and print the JSON, then train: run a short RLHF session (GRPO steps of SmolLM2-135M-Instruct "
        "against the service) and print where its report is; last, the reasoning section: a second service on "
        "examples/reasoning.yaml (a math check and a format check beside the reward models) scores generated "
        "arithmetic answers under raw_sum and lsc_sum (about 11 s more). About 3 minutes on 2 CPU cores.",
    )
    d.add_argument("--config", help=CONFIG_HELP)
    d.add_argument("--port", type=int, default=0, help="port of the demo's service (default: a free one)")
    d.add_argument(
        "--calibration-samples",
        type=int,
        default=4,
        help="base-policy samples per prompt for the example prompts' references (0: no calibration; default: 4)",
    )
    d.add_argument("--rlhf-steps", type=int, default=3, help="GRPO steps of the RLHF part (0: skip it; default: 3)")
    d.add_argument(
        "--prompts",
        default=str(DEFAULT_PROMPTS),
        help="prompt file of the RLHF part (default: ../shared/data/prompts.jsonl.gz when it exists, "
        "else a few built-in prompts)",
    )
    d.add_argument(
        "--out-dir",
        default="runs/demo",
        help="where the calibration log and the RLHF run's report go (default: runs/demo)",
    )
    d.add_argument(
        "--no-reasoning",
        dest="reasoning",
        action="store_false",
        help="skip the reasoning section (a math check and a format check beside the reward models, "
        "on the example config examples/reasoning.yaml)",
    )
    d.add_argument(
        "--reasoning-prompts", type=int, default=6, help="generated arithmetic prompts of the reasoning section"
    )
    d.set_defaults(func=_cmd_demo)

    from .training.config import TrainConfig

    t = command(sub, "train-head", "train a Bradley-Terry reward head on a frozen encoder")
    add_options(
        t,
        TrainConfig,
        flags={"weight_decays": "--weight-decay"},
        only=(
            "data",
            "out",
            "name",
            "backbone",
            "head",
            "hidden",
            "weight_decays",
            "lr",
            "max_epochs",
            "val_fraction",
            "max_length",
            "balance_length",
            "length_penalty",
            "limit",
            "seed",
        ),
    )
    t.set_defaults(func=_cmd_train_head)

    e = command(sub, "eval-rm", "pairwise accuracy of a configured model on preference pairs")
    e.add_argument("--model", required=True, help="the model to evaluate: a model name of the config")
    e.add_argument("--config", help=CONFIG_HELP)
    e.add_argument("--data", required=True, help=PAIRS_HELP)
    e.add_argument("--limit", type=int, help="use only the first N pairs")
    e.add_argument("--out", help="also write the result as JSON here")
    e.add_argument("--update-card", metavar="KEY", help="store the result in the model's card under evaluation.KEY")
    e.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for the 95%% intervals (0: none; default: 1000)",
    )
    e.add_argument("--scores-out", help="also save the per-pair rewards here (.npz)")
    e.set_defaults(func=_cmd_eval_rm)

    from .calibration import CalibrationConfig

    c = command(sub, "calibrate", "per-prompt reference rewards from base-policy samples, stored via the service")
    add_options(c, CalibrationConfig)
    c.set_defaults(func=_cmd_calibrate)

    from .trainer.grpo import RLHFConfig

    h = command(sub, "rlhf", "RLHF (TRL GRPO, KL-regularised) of a policy against a running service")
    add_options(h, RLHFConfig)
    h.set_defaults(func=_cmd_rlhf)

    from .experiments.best_of_k import BestOfKConfig
    from .experiments.kl_curves import KLCurvesConfig
    from .experiments.rlhf import RLHFExperimentConfig

    x = command(sub, "experiment", "the LSC paper's claims at small scale: best-of-k selection, RLHF runs, KL curves")
    xs = x.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    xb = command(xs, "best-of-k", "pick the best of k base samples by raw_sum vs lsc_sum (docs/experiments.md)")
    add_options(xb, BestOfKConfig)
    xb.set_defaults(func=_cmd_experiment, config_cls=BestOfKConfig)
    xr = command(xs, "rlhf", "GRPO runs, raw_sum vs lsc_sum × KL strengths × seeds (needs best-of-k's output)")
    add_options(xr, RLHFExperimentConfig)
    xr.set_defaults(func=_cmd_experiment, config_cls=RLHFExperimentConfig)
    xk = command(
        xs,
        "kl-curves",
        "proxy-optimised selection along the KL axis, judged by gold reward models (resumable; docs/experiments.md)",
    )
    add_options(xk, KLCurvesConfig)
    xk.add_argument(
        "--max-generation-seconds",
        type=float,
        default=None,
        help="stop generating after this long (exit 3); the same command continues the pool",
    )
    xk.set_defaults(func=_cmd_experiment, config_cls=KLCurvesConfig)
