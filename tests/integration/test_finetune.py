"""Multi-task fine-tuning of the top encoder layers, and serving base + delta (tiny real encoder)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from rewardlab.datasets import Pair
from rewardlab.training.finetune import FinetuneConfig, balanced_sample, finetune
from rewardserve.backends.encoder_head import EncoderHeadBackend

from ..conftest import TINY_HIDDEN


def _pairs_file(path, n: int, seed: int):
    rng = np.random.default_rng(seed)
    words = "the dog cat egg water boil help please good bad hello world".split()
    with gzip.open(path, "wt") as f:
        for i in range(n):
            a = " ".join(rng.choice(words, rng.integers(2, 12)))
            b = " ".join(rng.choice(words, rng.integers(2, 12)))
            f.write(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": f"question {i} {a[:8]}"}],
                        "chosen": "good " + a,
                        "rejected": "bad " + b,
                    }
                )
                + "\n"
            )
    return path


def _tiny_config(tiny, root, helpful, harmless, out, **overrides) -> FinetuneConfig:
    """Fine-tuning on the tiny encoder: its top layer, every pair, fast learning rates."""
    base = {"top_layers": 1, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-3, "max_length": 64, "val_fraction": 0.2}
    return FinetuneConfig(
        helpful=str(helpful),
        harmless=str(harmless),
        out=str(out),
        backbone=str(tiny["encoder"]),
        helpful_pairs=None,
        val_helpful_pairs=None,
        cache_dir=str(root / "cache"),
        **{**base, **overrides},
    )


@pytest.fixture(scope="module")
def tuned(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    helpful, harmless = _pairs_file(root / "help.jsonl.gz", 80, 0), _pairs_file(root / "harm.jsonl.gz", 60, 1)
    cfg = _tiny_config(tiny, root, helpful, harmless, root / "out", epochs=1)
    cards = finetune(cfg, log=lambda m: None)
    return cfg, cards, root / "out"


def test_balanced_sample_has_no_length_signal():
    pairs = [Pair("p", "x" * (5 + i % 7), "y" * (5 + (i * 3) % 11)) for i in range(200)]
    idx = balanced_sample(pairs, np.arange(200), 60, 0)
    longer = sum(len(pairs[i].chosen) > len(pairs[i].rejected) for i in idx)
    shorter = sum(len(pairs[i].chosen) < len(pairs[i].rejected) for i in idx)
    assert longer == shorter == 30
    assert (balanced_sample(pairs, np.arange(200), 60, 0) == idx).all()  # seeded


def test_finetune_writes_a_delta_of_the_top_layers_and_heads_naming_it(tuned):
    cfg, cards, out = tuned
    delta = load_file(str(out / "encoder-delta.safetensors"))
    assert delta and all(k.startswith("encoder.layer.1.") for k in delta)  # tiny encoder: 2 layers, top 1 trained
    assert all(str(v.dtype) == "torch.float16" for v in delta.values())
    for task in ("helpful", "harmless"):
        card = cards[task]
        assert card["data"]["sha256"] and card["hyperparameters"]["top_layers"] == 1
        assert card["backbone"]["delta_sha256"] and card["selection"][0]["epoch"] == 0.0
        assert json.loads((out / f"{task}.json").read_text())["name"] == task


def test_backend_serves_base_plus_delta_with_one_encoder(tiny, tuned):
    _, _, out = tuned
    heads = {t: str(out / f"{t}.safetensors") for t in ("helpful", "harmless")}
    be = EncoderHeadBackend("x", heads=heads, path=str(tiny["encoder"]), max_length=64)
    base = EncoderHeadBackend("y", heads={}, path=str(tiny["encoder"]), max_length=64)
    delta = load_file(str(out / "encoder-delta.safetensors"))
    own = be.encoder.state_dict()
    assert all(np.allclose(own[k].numpy(), v.float().numpy()) for k, v in delta.items())
    assert be.encoder_revision.startswith(base.encoder_revision + "+")
    info = be.model_info()
    assert info["helpful"].revision != f"{base.encoder_revision}-x" and "+" in info["helpful"].revision
    assert info["helpful"].extra["encoder_delta"].endswith("encoder-delta.safetensors")
    r = be.forward([be.encode("hello", "good dog"), be.encode("hello", "bad cat")])
    assert r.shape == (2, 2) and np.isfinite(r).all()


def test_delta_on_another_base_or_mixed_deltas_is_an_error(tiny, tuned, tmp_path):
    from rewardlab import tiny_models

    _, _, out = tuned
    other = tiny_models.make_encoder(tmp_path / "other", seed=9)
    with pytest.raises(ValueError, match="base encoder revision"):
        EncoderHeadBackend("x", heads={"helpful": str(out / "helpful.safetensors")}, path=str(other), max_length=64)
    plain = tiny_models.make_head(tmp_path / "plain.safetensors", 3 * TINY_HIDDEN, seed=1)
    with pytest.raises(ValueError, match="different encoders"):
        EncoderHeadBackend(
            "x",
            heads={"helpful": str(out / "helpful.safetensors"), "p": str(plain)},
            path=str(tiny["encoder"]),
            max_length=64,
        )


def _length_signal_file(path, n: int, seed: int):
    """Pairs with no content signal, balanced by count (half chosen-longer) but not by size: the
    chosen-longer pairs differ by 12 words, the chosen-shorter ones by 1, so a Bradley-Terry model
    still profits from counting length; the penalty is there to stop that."""
    rng = np.random.default_rng(seed)
    words = "the dog cat egg water boil help please hello world".split()
    with gzip.open(path, "wt") as f:
        for i in range(n):
            base = list(rng.choice(words, 3))
            long, short = base + list(rng.choice(words, 12)), base + list(rng.choice(words, 1))
            chosen, rejected = (long, base) if i % 2 else (base, short)
            row = {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": " ".join(chosen)}
            f.write(json.dumps({**row, "rejected": " ".join(rejected)}) + "\n")
    return path


@pytest.mark.slow
def test_length_penalty_lowers_the_helpful_rewards_length_correlation(tiny, tmp_path):
    helpful = _length_signal_file(tmp_path / "help.jsonl.gz", 160, 0)
    harmless = _pairs_file(tmp_path / "harm.jsonl.gz", 40, 1)
    rng = np.random.default_rng(5)
    words = "the dog cat egg water boil help please hello world".split()
    texts = [(f"probe {i}", " ".join(rng.choice(words, k))) for i, k in enumerate(range(1, 31))]
    corr = {}
    for pen in (0.0, 10.0):
        out = tmp_path / f"out{pen}"
        cfg = _tiny_config(tiny, tmp_path, helpful, harmless, out, epochs=3, length_penalty=pen)
        cards = finetune(cfg, log=lambda m: None)
        assert ("penalty" in cards["helpful"]["length_debiasing"]) == bool(pen)
        heads = {"helpful": str(out / "helpful.safetensors")}
        be = EncoderHeadBackend("x", heads=heads, path=str(tiny["encoder"]), max_length=64)
        r = be.forward([be.encode(p, y) for p, y in texts])[:, 0]
        corr[pen] = float(np.corrcoef(r, [len(y) for _, y in texts])[0, 1])
    assert corr[0.0] > 0.5 and corr[10.0] < corr[0.0] - 0.3, corr
