"""Encoder rewards under bf16 weights are the float32 head on the bf16 encoder's pooled state (not
rounded to bf16's spacing: 0.0625 for |r| in 8–16), for both encoder kinds: a sequence classifier
(BERT: pooler + classifier) and encoder_head (pair features + a reward head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rewardlab import tiny_models
from rewardserve.backends import build_backend
from rewardserve.backends.encoder_head import RewardHead, save_head
from rewardserve.backends.fp32_head import head_in_float32
from rewardserve.config import Settings

PROMPT = "how do i boil an egg ? please help"
RESPONSES = ["boil the egg in water", "it is good", "what is a dog", "water and egg and fire", "thanks", "i help"]
HIDDEN = 32


def _backend(kind: str, path: Path, models: dict, **kw):
    cfg = {"kind": kind, "path": str(path), "max_length": 64, "models": models, **kw}
    settings = Settings(backbones={"bb": cfg})
    return build_backend("bb", settings.backbones["bb"], settings)


def _not_bf16(got: np.ndarray) -> None:
    assert np.abs(got).max() > 4  # where bf16 rounds to 0.03-0.06
    assert np.any(got != torch.tensor(got).to(torch.bfloat16).double().numpy())
    assert len(set(got.tolist())) == len(got)  # no ties


@pytest.fixture(scope="module")
def wide_encoder_classifier(tmp_path_factory) -> Path:
    """A tiny BERT classifier whose rewards depend on the input and are large (|r| up to ~13): its
    weights drawn wider than BERT's default (0.02), the classifier scaled up."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rewardserve.backends.encoder_head import default_encoder_path

    torch.manual_seed(11)
    cfg = BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=4 * HIDDEN,
        initializer_range=0.2,
        num_labels=1,
    )
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    out = tmp_path_factory.mktemp("enc") / "cls"
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_encoder_path()).save_pretrained(out)
    return out


def test_encoder_classifier_head_runs_in_float32_under_bf16(wide_encoder_classifier):
    rm = _backend("sequence_classifier", wide_encoder_classifier, {"m": {}}, dtype="bfloat16")
    encs = [rm.encode(PROMPT, r) for r in RESPONSES]
    got = rm.forward(encs)[:, 0]
    _not_bf16(got)
    # the float32 pooler and classifier on the first token's bf16 hidden state, from an untouched bf16 copy
    ref = type(rm.model).from_pretrained(wide_encoder_classifier, dtype=torch.bfloat16).eval()
    pool, cls = ref.bert.pooler.dense, ref.classifier
    for e, r in zip(encs, got):
        alone = rm.forward([e])[0, 0]
        t = {"input_ids": torch.tensor([e.input_ids]), "token_type_ids": torch.tensor([e.token_type_ids])}
        with torch.inference_mode():
            h = ref.bert(**t).last_hidden_state[0, 0].float()
            pooled = torch.tanh(h @ pool.weight.float().T + pool.bias.float())
            want = (pooled @ cls.weight.float().T + cls.bias.float()).item()
        assert alone == pytest.approx(want, abs=1e-5 * (1 + abs(want)))
        # in a padded batch: the bf16 encoder's rounding only (the bound of docs/configuration.md)
        assert r == pytest.approx(alone, abs=0.05 * (1 + abs(want)))
    assert not rm.is_decoder and rm.float32_head == ["classifier", "bert.pooler"]
    assert rm.model.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16  # the encoder stays


def test_head_in_float32_is_a_no_op_in_float32_and_idempotent(wide_encoder_classifier):
    rm = _backend("sequence_classifier", wide_encoder_classifier, {"m": {}})
    assert rm.float32_head == []  # float32 already: nothing converted, no hooks
    assert not rm.model.classifier._forward_pre_hooks
    bf = _backend("sequence_classifier", wide_encoder_classifier, {"m": {}}, dtype="bfloat16")
    assert head_in_float32(bf.model) == []  # converted once at load
    assert len(bf.model.classifier._forward_pre_hooks) == 1


def test_encoder_head_rewards_are_float32_heads_on_the_features_under_bf16(tmp_path):
    encoder = tiny_models.make_encoder(tmp_path / "encoder", hidden=HIDDEN, seed=3)
    torch.manual_seed(5)
    head = RewardHead(3 * HIDDEN, hidden=8)
    with torch.no_grad():
        head.net[-1].weight.mul_(200)
    save_head(head, tmp_path / "h.safetensors")
    rm = _backend("encoder_head", encoder, {"a": {"head": str(tmp_path / "h.safetensors")}}, dtype="bfloat16")
    encs = [rm.encode(PROMPT, r) for r in RESPONSES]
    got = rm.forward(encs)[:, 0]
    _not_bf16(got)
    with torch.inference_mode():
        want = head.eval()(rm.features(encs)).double().numpy()  # the saved float32 head on the same features
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    assert rm.dtype == torch.bfloat16 and rm._heads[0].net[1].weight.dtype == torch.float32
