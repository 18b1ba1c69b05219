"""The command line reads like a tool's: every (sub)command's --help runs and says what each option does,
in words generated from the config classes' field descriptions (cli_options.py)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from rewardserve.cli import build_parser, main
from rewardserve.cli_options import add_options, config_from_args, field_docs, walk_parsers

COMMANDS = [path for path, _ in walk_parsers(build_parser())]


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "rewardserve")
def test_help_runs_and_reads_like_a_tool(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rewardserve")
    assert "``" not in out, "RST markup in --help"
    parser = dict(walk_parsers(build_parser()))[path]
    assert parser.description and len(parser.description) > 20, f"{path}: no description of what it does"
    for action in _options(parser):
        name = action.option_strings[0] if action.option_strings else action.dest
        text = (action.help or "").strip()
        assert len(text) >= 15, f"{' '.join(path)} {name}: no help"
        assert not re.fullmatch(r"\(?default:? [^)]*\)?", text), f"{' '.join(path)} {name}: help is only its default"
        assert "``" not in text


def test_every_subcommand_is_listed_with_a_summary(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("serve", "demo", "train-head", "eval-rm", "calibrate", "references", "rlhf", "experiment"):
        assert re.search(rf"^\s+{cmd}\b", out, re.M), cmd


def test_demo_help_says_that_it_also_trains():
    demo = dict(walk_parsers(build_parser()))[("demo",)]
    assert "train" in demo.description and "RLHF" in demo.description and "calibrate" in demo.description
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "train" in next(c.help for c in top._choices_actions if c.dest == "demo")


def test_generated_help_is_the_field_description():
    from rewardlab.calibration import CalibrationConfig
    from rewardlab.trainer.grpo import RLHFConfig
    from rewardserve.config import Settings

    parsers = dict(walk_parsers(build_parser()))
    for path, cls in ((("calibrate",), CalibrationConfig), (("rlhf",), RLHFConfig), (("serve",), Settings)):
        helps = {a.dest: a.help for a in _options(parsers[path])}
        for name, doc in field_docs(cls).items():
            if name in helps:
                assert helps[name].startswith(doc.description.replace("%", "%%")), (path, name)


def test_flags_and_defaults_unchanged():
    p = build_parser()
    a = p.parse_args(
        [
            "train-head",
            "--data",
            "d.jsonl",
            "--out",
            "o",
            "--weight-decay",
            "0.1",
            "0.01",
            "--head",
            "linear",
            "--balance-length",
        ]
    )
    from rewardlab.training.config import TrainConfig

    cfg = config_from_args(TrainConfig, a)
    assert cfg.weight_decays == (0.1, 0.01) and cfg.head == "linear" and cfg.balance_length is True
    assert cfg.hidden == 256 and cfg.lr == 1e-3 and cfg.max_length == 256
    with pytest.raises(SystemExit):
        p.parse_args(["train-head", "--data", "d", "--out", "o", "--head", "tree"])
    s = p.parse_args(["serve"])
    assert s.host is None and s.port is None and not s.allow_unauthenticated and s.log_level == "info"
    assert s.graceful_timeout == 30.0 and s.drain_seconds == 1.0
    c = p.parse_args(["calibrate", "--prompts", "p.jsonl", "--top-p", "0.5", "--models", "a", "b"])
    from rewardlab.calibration import CalibrationConfig

    cc = config_from_args(CalibrationConfig, c)
    assert cc.top_p == 0.5 and cc.models == ["a", "b"] and cc.samples == 8 and cc.reference_set == "default"
    d = p.parse_args(["demo"])
    assert (d.port, d.calibration_samples, d.rlhf_steps, d.out_dir) == (0, 4, 3, "runs/demo")


def test_options_from_a_pydantic_model_and_a_dataclass():
    class Model(BaseModel):
        size: int = Field(3, description="how many")
        mode: Literal["a", "b"] = Field("a", description="which mode")
        names: list[str] | None = Field(None, description="some names")
        fast: bool = Field(False, description="go fast")

    @dataclasses.dataclass
    class Data:
        path: str = dataclasses.field(metadata={"description": "input file"})
        rates: tuple[float, ...] = dataclasses.field(default=(0.5,), metadata={"description": "rates to try, 5% steps"})

    p = argparse.ArgumentParser()
    add_options(p, Model)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["size"] == "how many (default: 3)" and helps["fast"] == "go fast (default: off)"
    assert p.parse_args([]).size is None  # not given: the class default holds
    ns = p.parse_args(["--size", "5", "--mode", "b", "--names", "x", "y", "--fast"])
    assert config_from_args(Model, ns) == Model(size=5, mode="b", names=["x", "y"], fast=True)
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])

    q = argparse.ArgumentParser()
    add_options(q, Data)
    assert "5%" in q.format_help()
    with pytest.raises(SystemExit):
        q.parse_args([])  # a field without a default is a required option
    assert config_from_args(Data, q.parse_args(["--path", "f", "--rates", "1", "2"])) == Data("f", (1.0, 2.0))

    @dataclasses.dataclass
    class Undocumented:
        x: int = 1

    with pytest.raises(ValueError, match="no description"):
        add_options(argparse.ArgumentParser(), Undocumented)
