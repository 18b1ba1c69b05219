"""Nothing a key holder sends can freeze, crash or poison the service: generated hostile input
(hypothesis, bounded) against a live server in its own process, per class — prompt-format bombs,
prompt formats naming local paths, huge numbers, text the limits must count and text that is not
valid Unicode — each answered 2xx or 4xx (never 5xx), nothing stored from a refused request, and
``/healthz`` answering fast throughout (a prober in a process of its own measures it, so the test's
own work never shows as the server's latency).

REWARDSERVE_HOSTILE_EXAMPLES sets the cases per class (default 25)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rewardserve.service_process import ServiceProcess

from ..conftest import tiny_settings

ADMIN = "hostile-admin-key-0123456789"
SCORE = "hostile-score-key-0123456789"
EXAMPLES = int(os.environ.get("REWARDSERVE_HOSTILE_EXAMPLES", "25"))
HEALTHZ_P99_S = 0.050
MAX_BODY = 16 * 1024 * 1024  # the default limits: what the worst bodies are measured against
MAX_TEXT = 200_000
MAX_MESSAGES = 1024  # limits.max_messages_per_prompt
MAX_REQUEST_MESSAGES = 65_536  # limits.max_messages_per_request
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROBE = r"""
import json, sys, threading, time
import httpx
url = sys.argv[1]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
out, bad = [], []
with httpx.Client(timeout=30) as c:
    c.get(url)
    print("ready", flush=True)
    while not stop.is_set():
        t0 = time.perf_counter()
        r = c.get(url)
        out.append(time.perf_counter() - t0)
        if r.status_code != 200:
            bad.append(r.status_code)
        time.sleep(0.01)
print(json.dumps({"latencies": out, "bad": bad}), flush=True)
"""


class HealthProbe:
    """``GET /healthz`` every 10 ms from a process of its own while the block runs."""

    def __init__(self, url: str):
        self.url = f"{url}/healthz"
        self.latencies: list[float] = []
        self.bad: list[int] = []

    def __enter__(self) -> HealthProbe:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, self.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate("", timeout=60)
        got = json.loads(out.strip().splitlines()[-1])
        self.latencies, self.bad = got["latencies"], got["bad"]

    def p99(self) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, math.ceil(0.99 * len(xs)) - 1)]

    def check(self, idle: HealthProbe) -> None:
        """p99 under ``HEALTHZ_P99_S`` more than the same server's idle p99 in this run (on a quiet
        machine that is a few milliseconds; on a shared, loaded one the scheduler adds its own)."""
        assert len(self.latencies) >= 20 and not self.bad, (len(self.latencies), self.bad)
        assert self.p99() < HEALTHZ_P99_S + idle.p99(), (
            f"/healthz p99 {1000 * self.p99():.1f} ms (max {1000 * max(self.latencies):.1f} ms, "
            f"{len(self.latencies)} probes; idle p99 {1000 * idle.p99():.1f} ms) while hostile requests were served"
        )


@pytest.fixture(scope="module")
def svc(tiny, tmp_path_factory) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    data = tiny_settings(tiny, tmp, torch_threads=1).model_dump(mode="json", exclude={"base_dir", "api_keys"})
    data["backbones"]["enc"]["models"]["b"]["missing_reference"] = "default"  # every valid request scores
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDSERVE_")}
    env["REWARDSERVE_API_KEYS"] = f"{ADMIN}, {SCORE} scope=score"
    with ServiceProcess(str(cfg), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def idle(svc) -> HealthProbe:
    """/healthz of the idle server, measured once: the baseline of the attack's latency checks."""
    with HealthProbe(svc.url) as probe:
        time.sleep(3)
    return probe


@pytest.fixture(scope="module")
def score_client(svc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc.url, timeout=120, headers={"Authorization": f"Bearer {SCORE}"}) as c:
        yield c


@pytest.fixture(scope="module")
def admin_client(svc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc.url, timeout=120, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def _post(c: httpx.Client, path: str, body: Any) -> httpx.Response:
    """POST ``body`` as JSON as a client could write it: non-finite numbers as NaN/Infinity tokens
    and lone surrogates as \\ud800 escapes, which Python's json emits and parses."""
    return c.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def _no_5xx(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["type"] and err["message"]


def _stored(admin: httpx.Client) -> Any:
    r = admin.get("/v1/reference-sets")
    assert r.status_code == 200, r.text
    return r.json()


# -- 1. prompt-format bombs: linear parsing, off the event loop ----------------------------------------
def _bomb(chars: int) -> str:
    unit = "<|user|>\n\n"
    return unit * (chars // len(unit))


@pytest.mark.slow
def test_the_worst_bodies_the_limits_allow_leave_healthz_fast(svc, idle, score_client):
    """The issue's reproduction at the default limits: every item at max_text_chars of empty chat
    turns, as many items as max_body_bytes holds, on /v1/score and /get_reward; and chats of
    max_messages_per_prompt empty messages, max_messages_per_request in all. Before, parsing them was
    quadratic and on the event loop (a 16 MiB body froze the pod for seconds); then, off the loop, the
    body's JSON parse and validation were single calls that held the GIL for 0.1-10 s (api/bodies.py
    reads them in pieces)."""
    prompt = _bomb(MAX_TEXT - 10)
    per_item = len(json.dumps({"prompt": prompt, "response": "ok"})) + 2
    as_strings = {"items": [{"prompt": prompt, "response": "ok"}] * ((MAX_BODY - 100) // per_item), "models": ["a"]}
    n = len(as_strings["items"]) // 2  # each sample carries its prompt twice: in query and in prompts
    openrlhf = {"query": [prompt + "ok"] * n, "prompts": [prompt] * n}
    chat = [{"role": "", "content": ""}] * MAX_MESSAGES
    chats = {"items": [{"prompt": chat, "response": "ok"}] * (MAX_REQUEST_MESSAGES // MAX_MESSAGES), "models": ["a"]}
    bodies = [
        ("/v1/score", json.dumps(as_strings).encode()),
        ("/get_reward", json.dumps(openrlhf).encode()),
        ("/v1/score", json.dumps(chats).encode()),
    ]
    for _, raw in bodies[:2]:
        assert MAX_BODY // 2 < len(raw) <= MAX_BODY, len(raw)  # the chats are bounded by their messages first
    # one prober through all three: the p99 of the whole attack (a p99 of one short body's few probes
    # would be its single worst probe, which a scheduler hiccup of a shared machine decides)
    with HealthProbe(svc.url) as probe:
        for (path, raw), what in zip(bodies, ("string prompts", "OpenRLHF", "chats")):
            t0 = time.perf_counter()
            r = score_client.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            print(f"\n{path} ({what}): {len(raw) / 2**20:.1f} MiB answered in {time.perf_counter() - t0:.1f} s")
    worst = sorted(probe.latencies)[-5:]
    print(
        f"\n/healthz idle p99 {1000 * idle.p99():.1f} ms; during the worst bodies p99 {1000 * probe.p99():.1f} ms "
        f"over {len(probe.latencies)} probes (worst five: {', '.join(f'{1000 * x:.0f}' for x in worst)} ms)"
    )
    probe.check(idle)


@pytest.mark.slow
def test_a_chat_of_more_messages_than_the_limit_is_refused_before_validation(svc, score_client, admin_client):
    """A chat over max_messages_per_prompt is a 422 naming the limit and the item, in a small body (the
    route checks it) and in a large one (checked before the chat is validated); the chat the issue
    measured, 600k empty messages in one item (16 MiB), answers at once; so do chats of more than
    max_messages_per_request messages together."""
    over = [{"role": "", "content": ""}] * (MAX_MESSAGES + 1)
    huge = [{"role": "", "content": ""}] * ((MAX_BODY - 200) // (len(json.dumps(over[0])) + 2))
    for chat, pad in ((over, 0), (over, 100_000), (huge, 0)):
        body = {"items": [{"prompt": "ok", "response": "x" * pad}, {"prompt": chat, "response": "ok"}]}
        raw = json.dumps(body).encode()
        assert len(raw) <= MAX_BODY
        t0 = time.perf_counter()
        r = score_client.post("/v1/score", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (len(raw), r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["type"] == "invalid_request", err
        assert "items[1].prompt has" in err["message"] and "max_messages_per_prompt" in err["message"], err
        print(f"\n{len(raw) / 2**20:.2f} MiB, {len(chat)} messages: 422 in {time.perf_counter() - t0:.2f} s")
        before = _stored(admin_client)
        up = _post(admin_client, "/v1/references", {"model": "a", "entries": [{"prompt": chat, "value": 1.0}]})
        assert up.status_code == 422 and "entries[0].prompt" in up.json()["error"]["message"], up.text[:300]
        assert _stored(admin_client) == before
    # chats within the per-prompt limit, more than max_messages_per_request together (16 MiB of them)
    chat = [{"role": "", "content": ""}] * MAX_MESSAGES
    most = (MAX_BODY - 100) // (len(json.dumps({"prompt": chat, "response": "ok"})) + 2)  # as max_body_bytes holds
    for n in (MAX_REQUEST_MESSAGES // MAX_MESSAGES + 1, most):
        raw = json.dumps({"items": [{"prompt": chat, "response": "ok"}] * n}).encode()
        r = score_client.post("/v1/score", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "max_messages_per_request" in r.json()["error"]["message"], r.text[:300]


@given(
    fmt=st.sampled_from(["auto", "chatml", "llama3", "llama2", "gemma", "phi3", "zephyr", "plain"]),
    pieces=st.lists(
        st.sampled_from(
            [
                "<|im_start|>",
                "<|im_end|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
                "<start_of_turn>",
                "<end_of_turn>",
                "<|user|>",
                "<|assistant|>",
                "<|system|>",
                "<|end|>",
                "[INST]",
                "[/INST]",
                "<<SYS>>",
                "<s>",
                "</s>",
                "user",
                "\n",
                " ",
                "x",
            ]
        ),
        min_size=1,
        max_size=12,
    ),
    repeat=st.integers(1, 5_000),
)
@HYPOTHESIS
def test_generated_chat_markup_is_scored_or_refused(svc, score_client, fmt, pieces, repeat):
    prompt = "".join(pieces) * repeat
    r = _post(
        score_client,
        "/v1/score",
        {"items": [{"prompt": prompt[:MAX_TEXT], "response": "".join(pieces)}], "prompt_format": fmt},
    )
    _no_5xx(r)
    assert r.status_code == 200, r.text[:300]


# -- 2. prompt formats a request may name ----------------------------------------------------------------
@given(
    spec=st.one_of(
        st.sampled_from(["/etc/passwd", "/root", "/nonexistent", "/etc/../etc", "~", ".", "..", "/tmp//x/../"]),
        st.text(min_size=1, max_size=40).filter(lambda s: s.strip()),
    )
)
@HYPOTHESIS
def test_a_request_names_no_tokenizer_the_operator_did_not_list(svc, score_client, spec):
    r = _post(
        score_client,
        "/v1/score",
        {"items": [{"prompt": "p", "response": "r"}], "prompt_format": f"tokenizer:{spec}"},
    )
    _no_5xx(r)
    assert r.status_code == 422
    err = r.json()["error"]
    if err["type"] == "invalid_prompt_format":  # else the schema refused the text itself (e.g. a surrogate)
        assert "not allowed" in err["message"] and "allowed_prompt_formats" in err["message"]
        assert "No such file" not in err["message"] and "Errno" not in err["message"]


# -- 3. bounded numbers -------------------------------------------------------------------------------------
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e6, -1e6, 1e6 + 1, 5e-324, 0.0, -0.0]),
    st.integers(-(10**30), 10**30),
)


def _bounded(x: float) -> bool:
    return math.isfinite(x) and abs(x) <= 1e6


@example(x=1e308, where="reference")  # the reproductions: fsum overflowed (500)
@example(x=1e308, where="weight")
@example(x=-1e308, where="reference")  # every transformed reward silently 0
@given(x=NUMBERS, where=st.sampled_from(["reference", "weight", "both"]))
@HYPOTHESIS
def test_huge_numbers_are_refused_and_aggregates_stay_finite(svc, score_client, x, where):
    item: dict[str, Any] = {"prompt": "p", "response": "r"}
    body: dict[str, Any] = {"items": [item], "models": ["a", "b"]}
    if where in ("reference", "both"):
        item["reference"] = {"a": x, "b": x}
    if where in ("weight", "both"):
        body["aggregate"] = {"method": "raw_sum" if x > 0 else "lsc_sum", "weights": {"a": x, "b": x}}
    r = _post(score_client, "/v1/score", body)
    _no_5xx(r)
    if _bounded(float(x)):
        assert r.status_code == 200, r.text[:300]
        res = r.json()["results"][0]
        assert all(math.isfinite(v) for v in [res["aggregate"], *res["transformed"].values()])
    else:
        assert r.status_code == 422, r.text[:300]


@example(x=1e308, as_default=True)  # the reproduction: every score on the set a 500
@given(x=NUMBERS, as_default=st.booleans())
@HYPOTHESIS
def test_a_set_with_an_unbounded_value_is_refused_at_import_and_never_stored(svc, admin_client, x, as_default):
    before = _stored(admin_client)
    fp = "default" if as_default else "ab" * 32
    r = _post(
        admin_client,
        "/v1/reference-sets/hostile-import/references",
        {"references": [{"model": "a", "prompt_fingerprint": fp, "value": x}]},
    )
    _no_5xx(r)
    if _bounded(float(x)):
        assert r.status_code == 200, r.text[:300]
        assert admin_client.delete("/v1/reference-sets/hostile-import").status_code == 200
    else:
        assert r.status_code == 422, r.text[:300]
        assert _stored(admin_client) == before
        up = _post(admin_client, "/v1/references", {"model": "a", "default": {"value": x}, "reference_set": "h-up"})
        assert up.status_code == 422 and _stored(admin_client) == before


# -- 4. limits that count everything; text that is not valid Unicode ------------------------------------------
SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])


@given(
    text=st.text(max_size=30),
    bad=SURROGATES,
    at=st.integers(0, 30),
    field=st.sampled_from(["prompt", "response", "role", "content", "id", "model_key"]),
)
@HYPOTHESIS
def test_a_lone_surrogate_anywhere_is_a_422_naming_the_item(svc, score_client, admin_client, text, bad, at, field):
    poisoned = text[:at] + bad + text[at:]
    item: dict[str, Any] = {"prompt": "p", "response": "r"}
    if field in ("prompt", "response", "id"):
        item[field] = poisoned
    elif field in ("role", "content"):
        item["prompt"] = [{"role": "user", "content": "c", field: poisoned}]
    else:
        item["reference"] = {poisoned: 0.5}
    r = _post(score_client, "/v1/score", {"items": [{"prompt": "ok", "response": "ok"}, item]})
    _no_5xx(r)
    assert r.status_code == 422, r.text[:300]
    assert "items.1" in r.json()["error"]["message"]
    before = _stored(admin_client)
    entry: dict[str, Any] = {"prompt": item["prompt"], "value": 1.0}
    up = _post(admin_client, "/v1/references", {"model": "a", "entries": [entry], "reference_set": "h-sur"})
    if field in ("prompt", "role", "content"):
        assert up.status_code == 422 and "entries.0" in up.json()["error"]["message"], up.text[:300]
    assert _stored(admin_client) == before or up.status_code == 200
    if up.status_code == 200:
        admin_client.delete("/v1/reference-sets/h-sur")
    q = _post(score_client, "/get_reward", {"query": [poisoned + "r"], "prompts": [poisoned]})
    _no_5xx(q)
    assert q.status_code == 422


@example(role_chars=300_000, content_chars=0, response_chars=0)  # the reproduction
@example(role_chars=0, content_chars=MAX_TEXT - 10, response_chars=11)
@given(
    role_chars=st.integers(0, 2 * MAX_TEXT),
    content_chars=st.integers(0, MAX_TEXT),
    response_chars=st.integers(0, MAX_TEXT),
)
@settings(parent=HYPOTHESIS, max_examples=max(5, EXAMPLES // 3))
def test_every_character_counts_against_the_text_limit(
    svc, score_client, admin_client, role_chars, content_chars, response_chars
):
    prompt = [{"role": "r" * role_chars, "content": "c" * content_chars}]
    total = role_chars + content_chars + response_chars
    r = _post(score_client, "/v1/score", {"items": [{"prompt": prompt, "response": "x" * response_chars}]})
    _no_5xx(r)
    assert r.status_code == (413 if total > MAX_TEXT else 200), (total, r.status_code, r.text[:200])
    before = _stored(admin_client)
    up = _post(
        admin_client,
        "/v1/references",
        {"model": "a", "entries": [{"prompt": prompt, "samples": ["x" * response_chars]}], "reference_set": "h-len"},
    )
    _no_5xx(up)
    if total > MAX_TEXT:
        assert up.status_code == 413 and "max_text_chars" in up.json()["error"]["message"]
        assert _stored(admin_client) == before
    else:
        assert up.status_code == 200, up.text[:300]
        assert admin_client.delete("/v1/reference-sets/h-len").status_code == 200


# -- the whole attack, with /healthz watched -------------------------------------------------------------------
def test_healthz_stays_fast_while_generated_attacks_run(svc, idle, score_client, admin_client):
    """The generated classes above once more, all while a prober watches /healthz."""
    with HealthProbe(svc.url) as probe:
        for test in (
            test_generated_chat_markup_is_scored_or_refused,
            test_a_request_names_no_tokenizer_the_operator_did_not_list,
            test_huge_numbers_are_refused_and_aggregates_stay_finite,
        ):
            test(svc=svc, score_client=score_client)
        test_a_set_with_an_unbounded_value_is_refused_at_import_and_never_stored(svc=svc, admin_client=admin_client)
        test_a_lone_surrogate_anywhere_is_a_422_naming_the_item(
            svc=svc, score_client=score_client, admin_client=admin_client
        )
    probe.check(idle)


# -- deploy and key hygiene -------------------------------------------------------------------------------------
def test_models_show_no_filesystem_paths(svc, score_client, tiny):
    r = score_client.get("/v1/models")
    assert r.status_code == 200
    text = r.text
    for p in tiny.values():
        assert str(Path(p).parent) not in text, "a local path is shown to a score key"
    assert r.json()["models"] and all("source" in m for m in r.json()["models"])
