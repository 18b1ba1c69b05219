"""Real `rewardserve serve` processes: replicas share Redis; references survive kill -9."""

from __future__ import annotations

import signal

import httpx
import pytest
import yaml

from rewardserve.service_process import ServiceProcess


@pytest.fixture
def config_file(tiny, tmp_path):
    cfg = {
        "backbones": {
            "enc": {
                "kind": "encoder_head",
                "path": str(tiny["encoder"]),
                "max_length": 64,
                "models": {"a": {"head": str(tiny["head_a"])}},
            }
        }
    }
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _put(url, prompt, value):
    r = httpx.post(f"{url}/v1/references", json={"model": "a", "entries": [{"prompt": prompt, "value": value}]})
    assert r.status_code == 200, r.text


def _ref(url, prompt):
    r = httpx.post(f"{url}/v1/score", json={"items": [{"prompt": prompt, "response": "r"}], "models": ["a"]})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["reference"]["a"]


@pytest.mark.slow
def test_two_replicas_share_references_through_redis(config_file, fresh_redis_url):
    env = {"REWARDSERVE_REFERENCES__STORE": fresh_redis_url}
    with ServiceProcess(config_file, env=env) as one, ServiceProcess(config_file, env=env) as two:
        _put(one.url, "written by replica one", 1.5)
        _put(two.url, [{"role": "user", "content": "written by replica two"}], -0.75)
        assert _ref(two.url, "written by replica one") == 1.5
        assert _ref(one.url, [{"role": "user", "content": "written by replica two"}]) == -0.75


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_killed_service_keeps_every_reference(config_file, tmp_path, store, request):
    url = f"sqlite:///{tmp_path / 'refs.db'}" if store == "sqlite" else request.getfixturevalue("fresh_redis_url")
    env = {"REWARDSERVE_REFERENCES__STORE": url}
    svc = ServiceProcess(config_file, env=env).start()
    prompts = [f"prompt {i}" for i in range(50)]
    for i, p in enumerate(prompts):
        _put(svc.url, p, i / 10)
    svc.stop(signal.SIGKILL)
    with ServiceProcess(config_file, env=env) as again:
        assert [_ref(again.url, p) for p in prompts] == [i / 10 for i in range(50)]
