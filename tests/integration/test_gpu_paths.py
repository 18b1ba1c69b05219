"""The GPU paths, checked on the CPU with tiny real checkpoints: the reward in float32 from a bf16
model, shared and plain rewards in bf16 within the documented bound, no cache where none is wanted,
the attention implementation, the shared path's mask from lengths, TF32, device-aware defaults,
the revision digest's cache, and the host memory of loading (subprocess)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rewardlab import tiny_models
from rewardserve.backends import base as backends_base
from rewardserve.backends import build_backend, describe_settings
from rewardserve.backends.base import enable_tf32, file_digest, weights_digest
from rewardserve.backends.prefix import suffix_mask
from rewardserve.config import Settings

# shared vs plain in bfloat16 (docs/configuration.md): the hidden states of the two paths differ by
# bf16 rounding (different kernels and shapes); with the head in float32 the rewards agree within
BF16_BOUND = 0.05  # × (1 + |r|)


def _backend(path, **kw):
    cfg = {"kind": "sequence_classifier", "path": str(path), "max_length": 128, "models": {"m": {}}, **kw}
    settings = Settings(backbones={"bb": cfg})
    return build_backend("bb", settings.backbones["bb"], settings)


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """A tiny decoder whose rewards are large (|r| ~ 10: where bf16's spacing is 0.0625)."""
    from safetensors.torch import load_file, save_file

    out = tiny_models.make_decoder_classifier(
        tmp_path_factory.mktemp("wide") / "dec", chat_template=True, hidden=64, heads=4, seed=7
    )
    f = out / "model.safetensors"
    tensors = load_file(str(f))
    tensors["score.weight"] = tensors["score.weight"] * 40
    save_file(tensors, str(f), metadata={"format": "pt"})
    return out


PROMPT = [{"role": "user", "content": "how do i boil an egg ? please help"}]
RESPONSES = [
    "boil the egg in water",
    "it is good",
    "what is a dog",
    "water and egg and fire",
    "thanks",
    "the cat is a good cat and the dog is bad",
    "i help you",
    "hello world",
]


def test_rewards_are_float32_under_bf16_and_plain_forward_keeps_no_cache(wide):
    rm = _backend(wide, dtype="bfloat16", share_prompt_prefix=False)
    assert rm.dtype == torch.bfloat16 and rm._fp32_head
    seen = []
    hook = rm.model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("use_cache")), with_kwargs=True)
    try:
        encs = [rm.encode(PROMPT, r) for r in RESPONSES]
        got = rm.forward(encs)[:, 0]
    finally:
        hook.remove()
    assert seen == [False]  # the plain forward asks for no key/value cache
    assert np.abs(got).max() > 4  # in the range where bf16 rounds to 0.03-0.06
    as_bf16 = torch.tensor(got).to(torch.bfloat16).double().numpy()
    assert np.any(got != as_bf16)  # not rounded to bf16
    assert len(set(got.tolist())) == len(got)  # no ties
    # the reward is the float32 head on the bf16 pooled hidden state
    ids = torch.tensor([encs[0].input_ids])
    with torch.inference_mode():
        h = rm.model.model(input_ids=ids).last_hidden_state[0, -1]
    want = (h.float() @ rm.model.score.weight.float().T).item()
    assert got[0] == pytest.approx(want, abs=1e-5)


def test_shared_and_plain_rewards_in_bf16_agree_within_the_documented_bound(wide):
    share = _backend(wide, dtype="bfloat16", share_prompt_prefix=True)
    plain = _backend(wide, dtype="bfloat16", share_prompt_prefix=False)
    encs = [share.encode(PROMPT, r) for r in RESPONSES] + [share.encode("hi there", r) for r in RESPONSES[:3]]
    assert all(e.prefix_len > 0 for e in encs)
    got = share.forward(encs)[:, 0]
    alone = np.concatenate([plain.forward([e]) for e in encs])[:, 0]
    batched = plain.forward(encs)[:, 0]
    bound = BF16_BOUND * (1 + np.abs(alone))
    assert np.all(np.abs(got - alone) <= bound), np.abs(got - alone) / (1 + np.abs(alone))
    assert np.all(np.abs(batched - alone) <= bound)
    # float32: exact as before
    s32 = _backend(wide, share_prompt_prefix=True)
    p32 = _backend(wide, share_prompt_prefix=False)
    e32 = [s32.encode(PROMPT, r) for r in RESPONSES]
    assert np.max(np.abs(s32.forward(e32) - np.concatenate([p32.forward([e]) for e in e32]))) <= 1e-4


def test_attn_implementation_is_configurable_and_sharing_follows_it(tiny):
    eager = _backend(tiny["dec_chat"], attn_implementation="eager")
    sdpa = _backend(tiny["dec_chat"])
    assert sdpa.attn_implementation == "sdpa" and eager.attn_implementation == "eager"
    assert eager.shares_prefix and sdpa.shares_prefix
    assert eager.model_info()["m"].extra["attn_implementation"] == "eager"
    encs = [sdpa.encode(PROMPT, r) for r in RESPONSES]
    assert np.max(np.abs(eager.forward(encs) - sdpa.forward(encs))) <= 1e-4
    assert eager.cost_model.score > sdpa.cost_model.score  # eager materialises the scores
    with pytest.raises(ValueError, match="flash_attn"):
        _backend(tiny["dec_chat"], attn_implementation="flash_attention_2")


def test_suffix_mask_from_lengths_is_the_per_row_mask():
    P, S, pw, sw = [3, 5, 1], [4, 2, 6], 5, 6
    want = torch.zeros((3, sw, pw + sw), dtype=torch.bool)
    causal = torch.ones((sw, sw), dtype=torch.bool).tril()
    for r in range(3):
        want[r, :, : P[r]] = True
        want[r, :, pw : pw + S[r]] = causal[:, : S[r]]
    got = suffix_mask(torch.tensor(P), torch.tensor(S), pw, sw, None)
    assert got.dtype == torch.bool and torch.equal(got[:, 0], want)
    additive = suffix_mask(torch.tensor(P), torch.tensor(S), pw, sw, torch.bfloat16)
    assert additive.dtype == torch.bfloat16 and torch.equal(additive[:, 0] == 0, want)


def test_tf32_is_enabled_for_cuda_devices_only():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        enable_tf32(torch.device("cpu"))
        assert not torch.backends.cuda.matmul.allow_tf32
        enable_tf32(torch.device("cuda", 0))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_device_aware_defaults_and_what_start_up_prints(caplog):
    gpu = Settings(
        backbones={"rm": {"kind": "sequence_classifier", "path": "/m", "device": "cuda", "models": {"m": {}}}}
    )
    cfg = gpu.backbones["rm"]
    assert (cfg.dtype, cfg.max_length) == ("bfloat16", 4096)
    assert cfg.device_defaults() == {"dtype": "bfloat16", "max_length": 4096}
    b = gpu.batching
    assert (b.batch_tokens_for("cuda"), b.padding_ratio_for("cuda"), b.queued_tokens_for("cuda")) == (
        32768,
        0.5,
        1_048_576,
    )
    text = describe_settings(cfg, gpu)
    assert "dtype bfloat16 (device default)" in text and "max_batch_tokens 32768 (device default)" in text
    # what the config sets is kept, and not marked
    set_ = Settings(
        batching={"max_batch_tokens": 8192},
        backbones={
            "rm": {
                "kind": "sequence_classifier",
                "path": "/m",
                "device": "cuda:1",
                "dtype": "float16",
                "models": {"m": {}},
            }
        },
    )
    c2 = set_.backbones["rm"]
    assert (c2.dtype, c2.max_length, c2.device_defaults()) == ("float16", 4096, {"max_length": 4096})
    text = describe_settings(c2, set_)
    assert "dtype float16," in text and "max_batch_tokens 8192," in text and "max_length 4096 (device default)" in text
    # the CPU defaults are unchanged
    cpu = Settings(backbones={"rm": {"kind": "sequence_classifier", "path": "/m", "models": {"m": {}}}})
    c3 = cpu.backbones["rm"]
    assert (c3.dtype, c3.max_length) == ("float32", 256)
    assert (cpu.batching.batch_tokens_for("cpu"), cpu.batching.padding_ratio_for("cpu")) == (1024, 0.2)
    assert cpu.batching.queued_tokens_for("cpu") == 262_144


def test_start_up_logs_the_settings(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="rewardserve"):
        _backend(tiny["dec_plain"])
    assert any("backbone bb: device cpu, dtype float32" in r.getMessage() for r in caplog.records)


def test_revision_digest_is_remembered_by_path_size_and_mtime(tiny, tmp_path, monkeypatch):
    import os
    import shutil

    monkeypatch.setenv("REWARDSERVE_DIGEST_CACHE", str(tmp_path / "digests.json"))
    folder = Path(shutil.copytree(tiny["dec_plain"], tmp_path / "m"))
    files = sorted(folder.glob("*.safetensors")) + [folder / "config.json"]
    first = weights_digest(folder)
    assert first == file_digest(*files)  # the same revision as before the cache existed
    hashed = []
    monkeypatch.setattr(backends_base, "file_digest", lambda *p: hashed.append(p) or "x")
    assert weights_digest(folder) == first and hashed == []  # no weight read
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: hash again
    assert weights_digest(folder) == "x" and len(hashed) == 1
    # a hub cache snapshot is named by its commit
    snap = tmp_path / "hub" / "snapshots" / ("ab" * 20)
    shutil.copytree(tiny["dec_plain"], snap)
    assert weights_digest(snap) == "hub-" + "ab" * 6


def test_loading_holds_at_most_1_3x_the_weights_in_host_memory(tmp_path):
    """Loading goes straight to the device: the process's peak RSS grows by at most 1.3 × the
    weights' size (a model staged in host memory first, or copied out of the mmap, shows 2×)."""
    from bench.load_memory import build, measure_in_subprocess

    path = build(tmp_path / "small", "small", "float32")
    r = measure_in_subprocess(path, "float32", str(tmp_path / "digests.json"))
    assert r["weights_bytes"] > 100e6
    assert r["increase_over_weights"] <= 1.3, r


def test_encoder_head_backbones_keep_float32_on_cuda():
    s = Settings(
        backbones={"enc": {"kind": "encoder_head", "device": "cuda", "models": {"a": {"head": "h.safetensors"}}}}
    )
    assert (s.backbones["enc"].dtype, s.backbones["enc"].max_length) == ("float32", 256)
    assert s.backbones["enc"].device_defaults() == {"dtype": "float32", "max_length": 256}
