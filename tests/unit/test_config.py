import pytest

from rewardserve.config import ConfigError, load_settings


def test_embedded_default_serves_two_models_on_cpu():
    s = load_settings()
    assert len(s.model_names()) >= 2
    assert all(b.device == "cpu" for b in s.backbones.values())


def test_error_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "backbones:\n  x:\n    kind: encoder_head\n    models:\n      m: {head: h.safetensors, transform: exp}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    msg = str(e.value)
    assert str(p) in msg and "backbones.x.models.m.transform" in msg


def test_unknown_key_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("batching: {max_wait: 3}\nbackbones: {}\n")
    with pytest.raises(ConfigError, match="batching.max_wait"):
        load_settings(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_environment_overrides_file(monkeypatch):
    monkeypatch.setenv("REWARDSERVE_BATCHING__MAX_WAIT_MS", "7.5")
    monkeypatch.setenv("REWARDSERVE_PORT", "9123")
    s = load_settings()
    assert s.batching.max_wait_ms == 7.5
    assert s.port == 9123


def test_relative_head_paths_resolve_against_the_file():
    s = load_settings()
    b = next(iter(s.backbones.values()))
    for m in b.models.values():
        assert s.resolve_path(m.head).endswith(".safetensors")
        import os

        assert os.path.exists(s.resolve_path(m.head))


def test_duplicate_model_names_rejected(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(
        "backbones:\n"
        "  a: {kind: sequence_classifier, path: x, models: {m: {}}}\n"
        "  b: {kind: sequence_classifier, path: y, models: {m: {}}}\n"
    )
    with pytest.raises(ConfigError, match="model name 'm'"):
        load_settings(p)
