"""What a key holder sends cannot freeze, crash or poison the service — the pure parts: prompt
parsing linear in its input, prompt formats a request may name, bounded numbers, text that must be
valid Unicode, strict API key entries, password-safe URL masking, and a store whose reads never wait
for its lock on the event loop. (The live-server side: tests/api/test_hostile.py.)"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import threading
import time

import pytest
from pydantic import ValidationError

from rewardclient.protocol import MAX_ABS_VALUE
from rewardserve import lsc
from rewardserve import prompt_formats as pf
from rewardserve.config import MIN_API_KEY_CHARS, ConfigError, load_settings, parse_api_key
from rewardserve.references.redis_client import parse_sentinel_url, redact
from rewardserve.schemas import ScoreRequest

# turns per prompt for the linearity test; REWARDSERVE_LINEAR_TURNS makes it smaller (e.g. to show
# that the quadratic parser fails it without waiting minutes)
TURNS = int(os.environ.get("REWARDSERVE_LINEAR_TURNS", "100000"))
MAX_RATIO = 8.0  # 4x the input: linear gives ~4, n log n ~4.5, quadratic ~16

# one turn of each family; repeated, it is a prompt of many turns that every parser walks to the end
TURN = {
    "chatml": "<|im_start|>user\nx<|im_end|>\n",
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>",
    "gemma": "<start_of_turn>user\nx<end_of_turn>\n",
    "phi3": "<|user|>\nx<|end|>\n",
    "zephyr": "<|user|>\n\n",  # the reproduction: empty turns
    "llama2": "[INST] x [/INST] y </s>",
}


def _ratio(parse, small: str, large: str, rounds: int = 2) -> tuple[float, object]:
    """(best time of ``parse(large)`` / best time of ``parse(small)``, the large result): this
    thread's CPU time (time spent waiting for a core, as when other tests run beside this one, is not
    the parser's), the two sizes alternating, and the cyclic garbage collector off (the parser's own
    growth, not the collector's passes over the messages it builds)."""
    best = {small: math.inf, large: math.inf}
    out = None
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for text in (small, large):
                t0 = time.thread_time()
                out = parse(text)
                best[text] = min(best[text], time.thread_time() - t0)
    finally:
        gc.enable()
    return best[large] / best[small], out


@pytest.mark.parametrize("family", list(TURN))
def test_every_family_parses_in_time_linear_in_its_turns(family):
    ratio, parsed = _ratio(pf.FAMILIES[family].parse, TURN[family] * TURNS, TURN[family] * (4 * TURNS))
    assert isinstance(parsed, list) and len(parsed) >= 4 * TURNS, family  # it really walked every turn
    assert ratio < MAX_RATIO, f"{family}: 4x the turns took {ratio:.1f}x the time (super-linear)"


def test_a_learned_template_splits_in_linear_time():
    fmt = pf.TokenizerFormat("tokenizer:t", None, "<s>", None, None, "\nA: ", "\nU: ", "\nA:", ())
    turn = "hi\nA: ok\nU: "
    ratio, parsed = _ratio(fmt._split, "<s>" + turn * TURNS + "q\nA:", "<s>" + turn * (4 * TURNS) + "q\nA:")
    assert isinstance(parsed, list) and len(parsed) == 8 * TURNS + 1
    assert ratio < MAX_RATIO, f"4x the turns took {ratio:.1f}x the time (super-linear)"


def test_large_prompts_are_parsed_off_the_event_loop():
    fam = pf.FAMILIES["zephyr"]
    assert pf.runs_inline(["<|user|>\nhi\n"] * 8, ["ok"] * 8, fam)
    assert not pf.runs_inline(["<|user|>\n\n" * 1000], ["ok"], fam)
    assert not pf.runs_inline(["p"], ["r" * (pf.INLINE_MAX_CHARS + 1)], "auto")
    assert pf.runs_inline(["<|user|>\n\n" * 10_000], ["ok"], "plain")


class _EmptySeparators:
    """A tokenizer whose chat template puts nothing between the turns."""

    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    all_special_tokens: list[str] = []

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=True):
        return "".join(m["content"] for m in msgs)


def test_a_template_with_nothing_between_turns_is_refused_at_load():
    with pytest.raises(pf.PromptFormatError, match="template not parseable"):
        pf.TokenizerFormat.learn("tokenizer:x", _EmptySeparators())


def test_tokenizer_paths_are_normalised_before_caching(tmp_path):
    from rewardlab.tiny_models import _word_tokenizer

    _word_tokenizer(chat_template=True).save_pretrained(tmp_path / "tok")
    pf.tokenizer_format.cache_clear()
    spellings = [tmp_path / "tok", tmp_path / "tok" / ".." / "tok", tmp_path / "." / "tok"]
    formats = {id(pf.resolve_format(f"tokenizer:{p}")) for p in spellings}
    info = pf.tokenizer_format.cache_info()
    assert len(formats) == 1 and info.misses == 1 and info.hits == 2


def test_a_request_names_only_the_formats_the_configuration_lists(tmp_path):
    s = load_settings(allowed_prompt_formats=["tokenizer:models/qwen"], openrlhf={"prompt_format": "tokenizer:x/y"})
    for ok in ["auto", "plain", "chatml", "qwen", "tokenizer:models/qwen", "tokenizer:x/y"]:
        assert s.check_prompt_format(ok) == ok
    messages = set()
    for bad in [
        "tokenizer:/etc/passwd",
        "tokenizer:/root",
        "tokenizer:/nonexistent",
        "tokenizer:models/../models/qwen",
    ]:
        with pytest.raises(pf.PromptFormatError) as e:
            s.check_prompt_format(bad)
        msg = str(e.value)
        assert "not allowed" in msg and "tokenizer:x/y, tokenizer:models/qwen" in msg
        assert str(tmp_path) not in msg and (s.base_dir or "?") not in msg
        messages.add(msg.replace(bad, "X"))
    assert len(messages) == 1  # the same answer whatever the path: nothing learned about the filesystem
    with pytest.raises(ConfigError, match="allowed_prompt_formats"):
        load_settings(allowed_prompt_formats=["tokenizer:"])


def test_numbers_are_bounded_and_aggregates_cannot_overflow():
    from rewardserve.schemas import AggregateSpec, ReferenceRow, ReferencesUpload, ScoreItem

    for bad in (1e308, -1e308, 1e6 + 1):
        with pytest.raises(ValidationError):
            ScoreItem(prompt="p", response="r", reference={"a": bad})
        with pytest.raises(ValidationError):
            AggregateSpec(weights={"a": bad})
        with pytest.raises(ValidationError):
            ReferenceRow(model="a", prompt_fingerprint="default", value=bad)
        with pytest.raises(ValidationError):
            ReferencesUpload(model="a", default={"value": bad})
        with pytest.raises(ConfigError):
            load_settings(openrlhf={"weights": {"a": bad}})
    m = MAX_ABS_VALUE
    raw = {f"m{i}": 3.4e38 * (-1) ** i for i in range(16)}  # the largest float32 rewards
    u = {k: float(lsc.transform(v, -m if v > 0 else m)) for k, v in raw.items()}
    for method in ("lsc_sum", "raw_sum", "min"):
        assert math.isfinite(lsc.aggregate(raw, u, method, dict.fromkeys(raw, m)))
        assert math.isfinite(lsc.aggregate(raw, u, method, dict.fromkeys(raw, -m)))


def test_text_must_be_valid_unicode():
    from rewardserve.schemas import OpenRLHFRequest, ScoreRequest

    for item in (
        {"prompt": "\ud800", "response": "r"},
        {"prompt": "p", "response": "a\udfffb"},
        {"prompt": [{"role": "user\ud800", "content": "c"}], "response": "r"},
        {"prompt": "p", "response": "r", "reference": {"\ud800": 1.0}},
    ):
        with pytest.raises(ValidationError, match="lone surrogate") as e:
            ScoreRequest(items=[{"prompt": "ok", "response": "ok"}, item])
        assert e.value.errors()[0]["loc"][:2] == ("items", 1)
    with pytest.raises(ValidationError, match="lone surrogate"):
        OpenRLHFRequest(query=["q\ud800"], prompts=["q"])
    assert ScoreRequest(items=[{"prompt": "😀 emoji", "response": "é"}]).items[0].prompt == "😀 emoji"


@pytest.mark.parametrize(
    "entry,match",
    [
        ("scope=score", "must start with the key"),
        ("sets=a+b", "must start with the key"),
        ("short scope=score", "at least 16"),
        ("0123456789abcdef scope=score scope=admin", "given twice"),
        ("0123456789abcdef scope=root", "unknown key attribute"),
    ],
)
def test_api_key_entries_are_parsed_strictly(entry, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_api_key(entry, "api_keys")
    assert "0123456789abcdef" not in str(e.value) and "short" not in str(e.value).split(":")[-1]


def test_a_key_with_its_attributes_parses():
    assert MIN_API_KEY_CHARS == 16
    k = parse_api_key("0123456789abcdef== scope=score sets=a+b", "api_keys")
    assert (k.key, k.scope, k.sets) == ("0123456789abcdef==", "score", frozenset({"a", "b"}))


@pytest.mark.parametrize(
    "password", ["pw", "p/w", "p@w", "a/b@c", "@@@", "//", "p#w?x=1", "p:w", "%2F", "p w", "p@h:1/0"]
)
@pytest.mark.parametrize(
    "template",
    [
        "redis://:{}@h:6379/0",
        "redis://user:{}@h:6379/0",
        "rediss://:{}@h.example:6380/1",
        "redis+sentinel://:{}@s1:26379,s2:26379/master/0",
        "redis://h:6379/0?password={}",
        "unix://:{}@/run/redis.sock?db=0",
    ],
)
def test_url_masking_never_shows_the_password(template, password):
    url = template.format(password)
    shown = redact(url)
    assert password not in shown.partition("://")[2].replace("***", ""), shown
    assert "***" in shown


def test_url_masking_keeps_what_helps():
    assert redact("redis://:pw@h:6379/0") == "redis://***@h:6379/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
    assert redact("redis+sentinel://:a/b@c@s1:26379,s2:1/m/0") == "redis+sentinel://***@s1:26379,s2:1/m/0"
    assert parse_sentinel_url("redis+sentinel://:a/b@c@s1:26379/m/0")["password"] == "a/b@c"


def test_store_lookups_never_wait_on_the_event_loop_for_the_store_lock(tmp_path):
    """A listing, an export or a write holding the store's lock: a lookup neither waits for it nor
    stops the event loop (before, it took the lock on the loop: every request stalled)."""
    from rewardserve.references.base import Reference
    from rewardserve.references.sqlite import SQLiteStore

    async def run() -> tuple[float, float]:
        store = SQLiteStore(tmp_path / "refs.db")
        await store.put_many("m", [(f"{i:064x}", Reference(float(i))) for i in range(100)])
        gaps: list[float] = []
        stop = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        release = threading.Event()

        def hold() -> None:
            with store._lock:  # what a long scan or write does
                release.wait(5)

        holder = threading.Thread(target=hold)
        holder.start()
        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        got = await store.get_many("m", [f"{i:064x}" for i in range(3)])
        took = time.perf_counter() - t0
        await asyncio.sleep(0.05)
        release.set()
        holder.join()
        stop = True
        await tick
        assert sorted(r.value for r in got.values()) == [0.0, 1.0, 2.0]
        rows = await store.all_rows("default")
        assert [r[3].value for r in rows] == sorted(float(i) for i in range(100))
        await store.close()
        return took, max(gaps)

    took, gap = asyncio.run(run())
    assert took < 1.0, f"the lookup waited {took:.2f} s for the store lock"
    assert gap < 1.0, f"the event loop stalled {gap:.2f} s"


def test_scans_page_through_large_sets(tmp_path):
    from rewardserve.references import sqlite as sq
    from rewardserve.references.base import PAGE_ROWS, Reference

    async def run() -> None:
        store = sq.SQLiteStore(tmp_path / "refs.db")
        n = 2 * PAGE_ROWS + 7
        for rset in ("default", "b", "a"):
            await store.put_many("m", [(f"{i:064x}", Reference(float(i))) for i in range(n)], rset)
        await store.put_many("k", [("default", Reference(1.0))], "b")
        assert await store.sets() == {"a": {"m": n}, "b": {"k": 1, "m": n}, "default": {"m": n}}
        rows = await store.all_rows()
        assert len(rows) == 3 * n + 1 and [r[:3] for r in rows] == sorted(r[:3] for r in rows)
        assert len({r[:3] for r in rows}) == len(rows)
        await store.close()

    asyncio.run(run())


def test_the_chunked_fingerprint_is_the_protocol_fingerprint():
    from rewardclient.protocol import prompt_fingerprint

    for n in (0, 1, 255, 256, 257, 1000):
        msgs = [{"role": ("user", "assistant")[i % 2], "content": f'é {i} "q" 😀'} for i in range(n)]
        assert pf.fingerprint(msgs) == prompt_fingerprint(msgs)
    assert pf.fingerprint("a string") == prompt_fingerprint("a string")


def test_create_app_refuses_a_public_host_without_keys(monkeypatch):
    """Not only `rewardserve serve`: however the app is started (uvicorn --factory, a test, an embedder)."""
    from rewardserve.app import create_app

    monkeypatch.delenv("REWARDSERVE_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0"):
        create_app(load_settings(host="0.0.0.0"))
    create_app(load_settings(host="0.0.0.0", api_keys="0123456789abcdef-key"))
    create_app(load_settings(host="127.0.0.1"))


def test_docs_pass_keys_by_environment_or_file():
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    for f in docs.glob("*.md"):
        for line in f.read_text().splitlines():
            assert not re.search(r"--api-key[ =]\S", line), f"{f.name}: a key on a command line: {line}"
            assert not re.search(r"-e REWARDSERVE_API_KEYS=\S", line), f"{f.name}: a key on a command line: {line}"


async def _count_items(body: ScoreRequest) -> dict[str, int]:
    return {"items": len(body.items)}


def test_a_large_body_with_a_lone_surrogate_names_the_item():
    """Bodies over OFF_LOOP_BODY_BYTES validate in a worker thread; their errors match small bodies'."""
    import json as _json

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from rewardserve.api.bodies import OFF_LOOP_BODY_BYTES, OffLoopBodyRoute
    from rewardserve.api.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)
    app.router.route_class = OffLoopBodyRoute
    app.add_api_route("/t", _count_items, methods=["POST"])
    c = TestClient(app)
    for pad in (0, OFF_LOOP_BODY_BYTES):
        items = [{"prompt": "x" * pad, "response": "r"}, {"prompt": "\ud800", "response": "r"}]
        r = c.post("/t", content=_json.dumps({"items": items}), headers={"content-type": "application/json"})
        assert r.status_code == 422 and "items.1.prompt" in r.json()["error"]["message"], (pad, r.text[:200])
        r = c.post("/t", content=_json.dumps({"items": items[:1]}), headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json() == {"items": 1}
    r = c.post("/t", content=b"{" + b" " * OFF_LOOP_BODY_BYTES, headers={"content-type": "application/json"})
    assert r.status_code == 422
