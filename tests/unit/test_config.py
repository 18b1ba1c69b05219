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


# what the kubelet puts into a pod of a namespace with the Services rewardserve and rewardserve-sentinel
SERVICE_LINKS = {
    "REWARDSERVE_SERVICE_HOST": "10.96.0.12",
    "REWARDSERVE_SERVICE_PORT": "8000",
    "REWARDSERVE_SERVICE_PORT_HTTP": "8000",
    "REWARDSERVE_PORT": "tcp://10.96.0.12:8000",
    "REWARDSERVE_PORT_8000_TCP": "tcp://10.96.0.12:8000",
    "REWARDSERVE_PORT_8000_TCP_PROTO": "tcp",
    "REWARDSERVE_PORT_8000_TCP_PORT": "8000",
    "REWARDSERVE_PORT_8000_TCP_ADDR": "10.96.0.12",
    "REWARDSERVE_SENTINEL_SERVICE_HOST": "10.96.0.13",
    "REWARDSERVE_SENTINEL_PORT": "tcp://10.96.0.13:26379",
    "REWARDSERVE_SENTINEL_PORT_26379_TCP_ADDR": "10.96.0.13",
}


def test_kubernetes_service_links_are_not_settings(monkeypatch, caplog):
    import logging

    from rewardserve.config import Settings, is_service_link

    for k, v in SERVICE_LINKS.items():
        monkeypatch.setenv(k, v)
    with caplog.at_level(logging.DEBUG, logger="rewardserve.config"):
        s = load_settings()
    assert s.port == 8000
    assert "ignoring REWARDSERVE_PORT: a Kubernetes service-link variable" in caplog.text
    assert Settings(backbones=s.model_dump()["backbones"]).port == 8000  # direct construction too
    assert all(is_service_link(k, v) for k, v in SERVICE_LINKS.items())
    # a real setting of that name is still one
    assert not is_service_link("REWARDSERVE_PORT", "9000")
    monkeypatch.setenv("REWARDSERVE_PORT", "9001")
    assert load_settings().port == 9001


def test_flags_beat_environment_beats_file_beats_defaults(monkeypatch, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "port: 9100\nhost: 127.0.0.2\nbatching: {max_wait_ms: 3}\n"
        "backbones:\n  a: {kind: sequence_classifier, path: x, models: {m: {}}}\n"
    )
    s = load_settings(p)
    queued = s.batching.queued_tokens_for("cpu")  # unset in the file: the device's default
    assert (s.port, s.host, s.batching.max_wait_ms, queued) == (9100, "127.0.0.2", 3, 262_144)
    monkeypatch.setenv("REWARDSERVE_PORT", "9200")
    monkeypatch.setenv("REWARDSERVE_BATCHING__MAX_WAIT_MS", "4")
    s = load_settings(p)
    assert (s.port, s.host, s.batching.max_wait_ms) == (9200, "127.0.0.2", 4)
    s = load_settings(p, port=9300, host=None)  # None: the flag was not given
    assert (s.port, s.host, s.batching.max_wait_ms) == (9300, "127.0.0.2", 4)
    # an environment variable that sets one key of a section keeps the file's other keys
    assert s.backbones["a"].path == "x"


def test_a_bad_value_names_the_variable_it_came_from(monkeypatch):
    monkeypatch.setenv("REWARDSERVE_PORT", "http")
    monkeypatch.setenv("REWARDSERVE_BACKBONES__MINILM__DEVICE", "tpu")
    with pytest.raises(ConfigError) as e:
        load_settings()
    msg = str(e.value)
    assert "environment variable REWARDSERVE_PORT: port: Input should be a valid integer" in msg
    assert "environment variable REWARDSERVE_BACKBONES__MINILM__DEVICE: backbones.minilm.device:" in msg
    assert "config file" not in msg
    monkeypatch.delenv("REWARDSERVE_PORT")
    monkeypatch.delenv("REWARDSERVE_BACKBONES__MINILM__DEVICE")
    monkeypatch.setenv("REWARDSERVE_LIMITS", "{not json")
    with pytest.raises(ConfigError, match="environment variable REWARDSERVE_LIMITS: limits: not valid JSON"):
        load_settings()
    monkeypatch.delenv("REWARDSERVE_LIMITS")
    with pytest.raises(ConfigError, match="command-line flag --port: port: Input should be a valid integer"):
        load_settings(port="eighty")
