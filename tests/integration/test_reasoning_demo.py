"""The demo's reasoning section on the shipped example config (a math check, a format check and the
MiniLM helpful / harmless heads): generated arithmetic items with their answers as labels, scored
over HTTP under raw_sum and lsc_sum, and the table it prints."""

from __future__ import annotations

import math

from rewardlab.demo_reasoning import STYLES, arithmetic_items, compare, example_config_path, format_table
from rewardserve.app import create_app
from rewardserve.config import load_settings
from tests.conftest import LiveServer


def test_reasoning_section_on_the_example_config(tmp_path):
    items = arithmetic_items(3, seed=1)
    assert len(items) == 3 * len(STYLES) and all(it["label"].isdigit() for it in items)
    settings = load_settings(example_config_path(), references={"store": f"sqlite:///{tmp_path / 'refs.db'}"})
    with LiveServer(create_app(settings)) as srv:
        summary = compare(srv.url, items)
    assert summary["models"] == ["correct", "formatted", "helpful", "harmless"] and summary["prompts"] == 3
    mean = summary["mean"]
    assert mean["right but rude"]["correct"] == mean["right and polite"]["correct"] == 1.0
    assert mean["wrong but polite"]["correct"] == 0.0
    assert all(row["formatted"] == 1.0 for row in mean.values())
    # the failed math check costs log ε = log 0.001 under lsc_sum; under raw_sum it costs 1
    for style in ("right but rude", "right and polite"):
        raw_gap = mean[style]["raw_sum"] - mean["wrong but polite"]["raw_sum"]
        lsc_gap = mean[style]["lsc_sum"] - mean["wrong but polite"]["lsc_sum"]
        assert lsc_gap > raw_gap
    assert mean["wrong but polite"]["lsc_sum"] < math.log(1e-3)
    assert summary["best"]["lsc_sum"]["wrong but polite"] == 0
    table = format_table(summary)
    assert "| wrong but polite |" in table and "under lsc_sum" in table and "minus the wrong one" in table
