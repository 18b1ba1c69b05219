"""Export/import of references, revision-mismatch policy, prompt files of plain strings."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx

from rewardlab.datasets import load_prompts
from rewardserve.app import create_app
from rewardserve.references import Reference, open_store

from ..conftest import LiveServer, tiny_settings


def test_export_then_import_into_another_store(store_url, tmp_path):
    async def fill():
        s = open_store(f"sqlite:///{tmp_path / 'src.db'}")
        await s.put_many("m", [("fp1", Reference(1.0, "r", 0.85, 8, "pol", 5.0)), ("default", Reference(0.5))])
        await s.put_many("n", [("fp2", Reference(-3.0))])
        await s.close()

    asyncio.run(fill())
    dump = tmp_path / "refs.jsonl"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rewardserve.cli",
            "references",
            "export",
            str(dump),
            "--store",
            f"sqlite:///{tmp_path / 'src.db'}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert [(x["reference_set"], x["model"], x["fingerprint"]) for x in rows] == [
        ("default", "m", "default"),
        ("default", "m", "fp1"),
        ("default", "n", "fp2"),
    ]
    r = subprocess.run(
        [sys.executable, "-m", "rewardserve.cli", "references", "import", str(dump), "--store", store_url],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr

    async def read():
        s = open_store(store_url)
        rows = await s.all_rows()
        await s.close()
        return rows

    assert [(rs, m, fp, ref.to_dict()) for rs, m, fp, ref in asyncio.run(read())] == [
        (
            x["reference_set"],
            x["model"],
            x["fingerprint"],
            {k: v for k, v in x.items() if k not in ("reference_set", "model", "fingerprint")},
        )
        for x in rows
    ]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "rewardserve.cli", "references", *map(str, args)], capture_output=True, text=True
    )


def test_cli_sets_export_import_list_delete(store_url, tmp_path):
    async def fill():
        s = open_store(store_url)
        await s.put_many("m", [("fp1", Reference(1.0, "r", 0.85, 8, "base-a", 5.0))])
        await s.put_many(
            "m",
            [("fp1", Reference(-4.0, "r", 0.85, 8, "base-b", 6.0)), ("default", Reference(-1.0))],
            reference_set="b",
        )
        await s.close()

    asyncio.run(fill())
    dump = tmp_path / "b.jsonl"
    r = _cli("export", dump, "--store", store_url, "--reference-set", "b")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert {(x["reference_set"], x["fingerprint"], x["value"]) for x in rows} == {
        ("b", "fp1", -4.0),
        ("b", "default", -1.0),
    }
    # into another set, under another name; an export of the previous version (no reference_set) → default
    r = _cli("import", dump, "--store", store_url, "--reference-set", "b-copy")
    assert r.returncode == 0, r.stderr
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"model": "n", "fingerprint": "fp9", **Reference(3.0).to_dict()}) + "\n")
    assert _cli("import", old, "--store", store_url).returncode == 0
    listed = json.loads(_cli("list", "--store", store_url).stdout)["reference_sets"]
    assert listed == [
        {"name": "b", "models": {"m": 2}, "references": 2},
        {"name": "b-copy", "models": {"m": 2}, "references": 2},
        {"name": "default", "models": {"m": 1, "n": 1}, "references": 2},
    ]
    r = _cli("delete", "--store", store_url, "--reference-set", "b")
    assert r.returncode == 0 and "deleted 2" in r.stderr
    assert [x["name"] for x in json.loads(_cli("list", "--store", store_url).stdout)["reference_sets"]] == [
        "b-copy",
        "default",
    ]
    r = _cli("delete", "--store", store_url, "--reference-set", "bad name")
    assert r.returncode == 2 and "invalid reference set name" in r.stderr
    assert _cli("delete", "--store", store_url).returncode == 2


def test_revision_mismatch_warns_or_rejects(tiny, tmp_path):
    for policy in ("warn", "reject"):
        url = f"sqlite:///{tmp_path / f'{policy}.db'}"
        asyncio.run(_put(url, "a", "old prompt", Reference(0.7, revision="an-older-revision")))
        settings = tiny_settings(tiny, tmp_path, references={"store": url, "revision_mismatch": policy})
        with LiveServer(create_app(settings)) as srv:
            r = httpx.post(
                f"{srv.url}/v1/score", json={"items": [{"prompt": "old prompt", "response": "x"}], "models": ["a"]}
            )
            if policy == "warn":
                res = r.json()["results"][0]
                assert r.status_code == 200 and res["reference"]["a"] == 0.7
                assert "an-older-revision" in res["warnings"][0]
            else:
                assert r.status_code == 422 and r.json()["error"]["type"] == "stale_reference"


async def _put(url, model, prompt, ref):
    from rewardclient import prompt_fingerprint

    s = open_store(url)
    await s.put_many(model, [(prompt_fingerprint(prompt), ref)])
    await s.close()


def test_prompt_files_of_plain_strings(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text('"How do I boil an egg?"\n\n"Tell me a joke."\n')
    assert load_prompts(p) == ["How do I boil an egg?", "Tell me a joke."]
    q = tmp_path / "objs.jsonl"
    q.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "hi"}], "split": "test"})
        + "\n"
        + json.dumps({"prompt": "x", "split": "train"})
        + "\n"
    )
    assert load_prompts(q, split="test") == [[{"role": "user", "content": "hi"}]]
