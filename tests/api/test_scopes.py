"""API key scopes (score | admin) and reference-set limits, through a live server."""

from __future__ import annotations

import httpx
import pytest

from rewardserve.app import create_app
from rewardserve.config import ConfigError, parse_api_key

from ..conftest import LiveServer, tiny_settings

KEYS_FILE = """# team keys: KEY [scope=score|admin] [sets=A,B]
admin-key-1-0123456789abcdef
score-key-2-0123456789abcdef scope=score
limited-key-3-0123456789abcdef scope=score sets=x,y
limited-admin-4-0123456789abcdef  scope=admin  sets=x
"""


@pytest.fixture(scope="module")
def srv(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scopes")
    (tmp / "keys").write_text(KEYS_FILE)
    mp = pytest.MonkeyPatch()
    mp.setenv(
        "REWARDSERVE_API_KEYS", "env-plain-5-0123456789abcdef, env-score-6-0123456789abcdef scope=score sets=x+default"
    )
    try:
        settings = tiny_settings(tiny, tmp, api_keys_file=str(tmp / "keys"), openrlhf={"models": ["a"]})
    finally:
        mp.undo()
    assert [(k.scope, k.sets) for k in settings.load_api_keys()] == [
        ("admin", None),
        ("score", frozenset({"x", "default"})),
        ("admin", None),
        ("score", None),
        ("score", frozenset({"x", "y"})),
        ("admin", frozenset({"x"})),
    ]
    with LiveServer(create_app(settings)) as s:
        yield s


def call(srv, key, method, path, **kw):
    return httpx.request(
        method, srv.url + path, headers={"Authorization": f"Bearer {key}", **kw.pop("headers", {})}, timeout=60, **kw
    )


def forbidden(r, *words):
    assert r.status_code == 403, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"} and body["error"]["type"] == "forbidden"
    for w in words:
        assert w in body["error"]["message"], body
    assert "key-" not in r.text  # the key itself never appears


def upload(rset="default", value=1.0):
    return {"model": "a", "entries": [{"prompt": "scoped prompt", "value": value}], "reference_set": rset}


def score_body(rset=None):
    body = {"items": [{"prompt": "scoped prompt", "response": "r"}], "models": ["a"]}
    return body | ({"reference_set": rset} if rset else {})


def test_plain_keys_keep_full_access(srv):
    for key in ("admin-key-1-0123456789abcdef", "env-plain-5-0123456789abcdef"):
        assert call(srv, key, "POST", "/v1/references", json=upload("default", 1.0)).status_code == 200
        assert call(srv, key, "POST", "/v1/references", json=upload("plain-set", 2.0)).status_code == 200
        assert call(srv, key, "POST", "/v1/score", json=score_body("plain-set")).json()["results"][0]["reference"] == {
            "a": 2.0
        }
        assert call(srv, key, "DELETE", "/v1/reference-sets/plain-set").status_code == 200


def test_score_scope_reads_and_scores_but_never_writes(srv):
    key = "score-key-2-0123456789abcdef"
    call(srv, "admin-key-1-0123456789abcdef", "POST", "/v1/references", json=upload("s", 3.0))
    r = call(srv, key, "POST", "/v1/score", json=score_body("s"))
    assert r.status_code == 200 and r.json()["results"][0]["reference_source"] == {"a": "stored"}
    assert call(srv, key, "GET", "/v1/models").status_code == 200
    assert call(srv, key, "GET", "/v1/reference-sets").status_code == 200
    export = call(srv, key, "GET", "/v1/reference-sets/s/references")
    assert export.status_code == 200
    assert (
        call(
            srv,
            key,
            "POST",
            "/v1/references/lookup",
            json={"model": "a", "prompt_fingerprints": ["0" * 64], "reference_set": "s"},
        ).status_code
        == 200
    )
    assert call(srv, key, "POST", "/get_reward", json={"query": ["p r"], "prompts": ["p"]}).status_code == 200
    forbidden(call(srv, key, "POST", "/v1/references", json=upload("s", 9.0)), "scope 'score'", "admin")
    forbidden(call(srv, key, "POST", "/v1/reference-sets/s2/references", json=export.json()), "admin")
    forbidden(call(srv, key, "DELETE", "/v1/reference-sets/s"), "admin")
    # nothing was written or deleted
    assert call(srv, key, "GET", "/v1/reference-sets/s/references").json() == export.json()
    assert call(srv, key, "GET", "/v1/reference-sets/s2/references").status_code == 404


def test_keys_limited_to_sets(srv):
    key = "limited-key-3-0123456789abcdef"  # score, sets x and y
    call(srv, "admin-key-1-0123456789abcdef", "POST", "/v1/references", json=upload("x", 4.0))
    call(srv, "admin-key-1-0123456789abcdef", "POST", "/v1/references", json=upload("z", 5.0))
    assert call(srv, key, "POST", "/v1/score", json=score_body("x")).json()["results"][0]["reference"] == {"a": 4.0}
    assert call(srv, key, "POST", "/v1/score", json=score_body("y")).status_code == 200
    forbidden(call(srv, key, "POST", "/v1/score", json=score_body("z")), "'z'", "x, y")
    forbidden(call(srv, key, "POST", "/v1/score", json=score_body()), "'default'")  # no set named: the default set
    forbidden(
        call(
            srv,
            key,
            "GET",
            "/v1/references",
            params={"model": "a", "prompt_fingerprint": "0" * 64, "reference_set": "z"},
        )
    )
    forbidden(
        call(
            srv,
            key,
            "POST",
            "/v1/references/lookup",
            json={"model": "a", "prompt_fingerprints": ["0" * 64], "reference_set": "z"},
        )
    )
    forbidden(call(srv, key, "GET", "/v1/reference-sets/z/references"))
    forbidden(call(srv, key, "POST", "/get_reward", json={"query": ["p r"], "prompts": ["p"]}), "'default'")
    assert (
        call(
            srv, key, "POST", "/get_reward", json={"query": ["p r"], "prompts": ["p"]}, headers={"X-Reference-Set": "x"}
        ).status_code
        == 200
    )
    names = [s["name"] for s in call(srv, key, "GET", "/v1/reference-sets").json()["reference_sets"]]
    assert names == ["x"]  # y holds nothing; z and default are not this key's
    forbidden(call(srv, key, "POST", "/v1/references", json=upload("x", 9.0)), "admin")
    # an admin key limited to set x writes and deletes there only
    adm = "limited-admin-4-0123456789abcdef"
    assert call(srv, adm, "POST", "/v1/references", json=upload("x", 6.0)).status_code == 200
    forbidden(call(srv, adm, "POST", "/v1/references", json=upload("default", 6.0)), "'default'")
    forbidden(call(srv, adm, "DELETE", "/v1/reference-sets/z"), "'z'")
    assert call(srv, adm, "DELETE", "/v1/reference-sets/x").status_code == 200
    # the env key: score scope, sets x and default
    env = "env-score-6-0123456789abcdef"
    assert call(srv, env, "POST", "/v1/score", json=score_body()).status_code == 200
    forbidden(call(srv, env, "POST", "/v1/score", json=score_body("z")))
    forbidden(call(srv, env, "POST", "/v1/references", json=upload("default", 1.0)))
    # unknown keys are still 401
    assert call(srv, "nope", "POST", "/v1/score", json=score_body()).status_code == 401


@pytest.mark.parametrize(
    "entry, words",
    [
        ("k1 scope=root", ["scope=score|admin"]),
        ("k1 sets=a:b", ["invalid reference set name"]),
        ("k1 sets=", ["sets=A,B"]),
        ("k1 color=blue", ["'color'"]),
    ],
)
def test_bad_key_entries_name_the_source_not_the_key(entry, words, tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_api_key(entry, "api_keys_file keys line 3")
    msg = str(e.value)
    assert msg.startswith("api_keys_file keys line 3: ") and "k1" not in msg
    for w in words:
        assert w in msg
