"""The judge cells of ``python -m bench peer`` (bench/peer_judge.py): vLLM's ``/v1/completions``
request for the yes/no ids and the raw reward taken from its answer, the service's judge against a
vLLM-shaped fake that computes the next token's log-probs with transformers (rewards item by item),
and the whole command with only the judge cells on a tiny causal LM."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.peer import Cell, compare_rewards, plan_judge_cells
from bench.peer_judge import (
    JUDGE_MODEL,
    QUESTION,
    check_judge_rewards,
    encode_judge_items,
    judge_encoder,
    label_ids,
    score_vllm_judge,
    write_judge_config,
)
from bench.peer_load import judge_body, judge_rewards
from bench.peer_vllm import server_args
from bench.workload import generate
from tests.bench.fake_vllm import FakeVllm, model_logprobs, write_shim

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def judge_lm(tmp_path_factory) -> Path:
    """A tiny random causal LM on a BPE tokenizer with SmolLM2's (ChatML) template, where Yes / No
    (with and without a leading space, and lower case) are single tokens."""
    from rewardlab import tiny_models
    from tests.chat_templates import CORPUS, SPECS, make_tokenizer

    root = tmp_path_factory.mktemp("judge_lm")
    corpus = CORPUS + "Yes. No. yes, no. Is it? Yes! No! Answer Yes or No. yes no Yes No\n" * 12
    spec = next(s for s in SPECS if s.name == "smollm2")
    tok = make_tokenizer(spec, root / "tok", corpus=corpus)
    return tiny_models.make_causal_lm_for_tokenizer(tok, root / "lm", seed=3, initializer_range=0.4)


def test_judge_body_asks_for_the_raw_logprobs_of_the_yes_and_no_ids():
    body = judge_body("rm", [[1, 2, 3], [4, 5]], [7, 8], [9])
    assert body["prompt"] == [[1, 2, 3], [4, 5]] and body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert body["logprob_token_ids"] == [7, 8, 9] and body["logprobs"] is not None
    assert body["return_tokens_as_token_ids"] is True
    top0 = {"token_id:7": -1.0, "token_id:8": -2.0, "token_id:9": -0.5, "token_id:3": -0.1}
    top1 = {"token_id:7": -3.0, "token_id:8": -3.0, "token_id:9": -4.0}
    answer = {
        "choices": [
            {"index": 1, "logprobs": {"top_logprobs": [top1]}},
            {"index": 0, "logprobs": {"top_logprobs": [top0]}},
        ]
    }
    r = judge_rewards(answer, [7, 8], [9])
    assert r[0] == pytest.approx(math.log(math.exp(-1.0) + math.exp(-2.0)) + 0.5)
    assert r[1] == pytest.approx(-3.0 + math.log(2.0) + 4.0)  # back in prompt order
    gen = server_args("/m", 1, "float32", 1024, "cpu", runner="generate")
    assert gen[gen.index("--runner") + 1] == "generate"


def test_judge_cells_have_the_reward_model_cells_shapes():
    cells = plan_judge_cells((8,), 2, 8)
    assert [(c.label, c.workload, c.size, c.concurrency) for c in cells] == [
        ("judge-grpo8", "grpo8", 8, 2),
        ("judge-distinct", "grpo1", 1, 8),
    ]
    assert [c.title for c in cells] == ["judge grpo G=8", "judge distinct"]
    assert Cell("grpo8", "grpo8", 8, 2).title == "grpo G=8"


def test_service_judge_against_the_fake_generate_runner_item_by_item(judge_lm, tmp_path):
    """The judge check: the same groups to a live service with a judge backbone (text, sharing on)
    and to a vLLM-shaped generate runner (the service's rendered token ids, the yes/no ids' full-
    vocabulary log-probs from transformers): the same raw rewards."""
    import yaml

    from rewardserve.app import create_app
    from rewardserve.config import Settings
    from tests.conftest import LiveServer

    cfg = yaml.safe_load(write_judge_config(judge_lm, tmp_path, "cpu", "float32", 256).read_text())
    assert cfg["backbones"]["judge"]["models"] == {JUDGE_MODEL: {"question": QUESTION}}
    settings = Settings(references={"store": f"sqlite:///{tmp_path / 'refs.db'}"}, backbones=cfg["backbones"])
    be = judge_encoder(judge_lm, 256)
    yes, no = label_ids(be)
    assert len(yes) >= 2 and len(no) >= 2 and not set(yes) & set(no)
    items = generate("grpo4", 8, seed=2)
    ids, stats = encode_judge_items(be, items)
    assert 0 < stats["prompt_share"] < 1 and stats["items"] == 8
    with LiveServer(create_app(settings)) as srv, FakeVllm(None, logprobs=model_logprobs(str(judge_lm))) as fake:

        class S:
            def __init__(self, kind: str, url: str):
                self.kind, self.url = kind, url

        res = check_judge_rewards({"share": S("service", srv.url), "vllm": S("vllm", fake.url)}, be, [1, 4], 8, 0, 1e-4)
        v, tokens = score_vllm_judge(fake.url, [ids[:4], ids[4:]], yes, no)
        bodies = list(fake.bodies)
    assert res["items"] == 16 and res["pairs"]["share vs vllm"]["within_tolerance"], res
    assert len(set(res["first_rewards"]["vllm"])) > 1
    assert tokens == sum(len(x) for x in ids) and len(v) == 8
    assert all(b["logprob_token_ids"] == [*yes, *no] for b in bodies)
    assert compare_rewards({"a": v, "b": v}, 1e-4)["pairs"]["a vs b"]["max_abs_diff"] == 0.0


@pytest.mark.slow
def test_peer_judge_cells_only_with_a_fake_vllm(judge_lm, tmp_path):
    """``python -m bench peer --skip rm``: only the judge's cells, the service's judge and the fake
    generate runner (the same LM through transformers) started by the bench, the check, one short
    round, the JSON and the table."""
    shim = write_shim(tmp_path / "shim")
    out = tmp_path / "peer.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)])}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "peer",
            "--skip",
            "rm,noshare",
            "--judge-model",
            str(judge_lm),
            "--vllm-python",
            sys.executable,
            "--quick",
            "--seconds",
            "0.5",
            "--warmup",
            "0.2",
            "--pool",
            "32",
            "--check-items",
            "8",
            "--max-length",
            "256",
            "--distinct-concurrency",
            "2",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    assert "judge grpo G=8" in p.stdout and "judge rewards" in p.stdout
    res = json.loads(out.read_text())
    j = res["judge"]
    assert j["vllm_settings"]["request"]["endpoint"] == "/v1/completions"
    assert "generate" in j["vllm_settings"]["command"]
    assert j["rewards"]["items"] == 8 + 8
    assert all(x["within_tolerance"] for x in j["rewards"]["pairs"].values()), j["rewards"]
    assert set(res["cells"]) == {"judge-grpo8", "judge-distinct"}
    for label in ("judge-grpo8", "judge-distinct"):
        for name in ("share", "vllm"):
            (c,) = res["cells"][label][name]
            assert c["other_errors"] == 0 and c["requests"] > 0, (label, name)
        assert res["ratios"][label]["share_over_vllm"]["median"] > 0
    assert set(j["rss_mb"]["peak"]) == {"share", "vllm"}
    assert "rewards" not in res  # no reward-model cells ran
