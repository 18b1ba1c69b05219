"""schemathesis against the service's own OpenAPI schema, over real HTTP: no 5xx, every error in
the documented body, and every operation of the schema actually exercised.

REWARDSERVE_FUZZ_EXAMPLES sets the cases per operation (default 300; each operation that takes
input must get at least 90 % of them)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

EXAMPLES = int(os.environ.get("REWARDSERVE_FUZZ_EXAMPLES", "300"))


def _st() -> str:
    found = shutil.which("st") or str(Path(sys.executable).parent / "st")
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail("schemathesis is not installed")
        pytest.skip("schemathesis is not installed")
    return found


def _operations(schema: dict) -> dict[tuple[str, str], bool]:
    """(METHOD, path) → whether the operation takes input (a body, query or header parameters)."""
    ops = {}
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                # path parameters alone do not count: schemathesis stops early on an operation whose only
                # input is one path segment that keeps answering 404 (DELETE /v1/reference-sets/{name})
                params = [p for p in op.get("parameters", []) if p.get("in") != "path"]
                ops[(method.upper(), path)] = bool(op.get("requestBody") or params)
    return ops


def _operation_of(method: str, path: str, operations) -> tuple[str, str]:
    """The (METHOD, templated path) of a request: ``/v1/reference-sets/x/references`` is
    ``/v1/reference-sets/{name}/references`` (a path parameter matches one non-empty segment)."""
    if (method, path) in operations:
        return method, path
    for m, template in operations:
        pattern = "^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"
        if m == method and re.match(pattern, path):
            return m, template
    return method, path


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server, tmp_path):
    schema = httpx.get(f"{server.url}/openapi.json").json()
    operations = _operations(schema)
    har = tmp_path / "run.har"
    # One worker: with several, schemathesis 4.32 can leave an operation with no cases at all under
    # CPU load and still exit 0 (seen on a loaded 2-core machine); the per-operation check below
    # catches that either way.
    proc = subprocess.run(
        [
            _st(),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "1",
            "--phases",
            "examples,fuzzing",
            "--report",
            "har",
            "--report-har-path",
            str(har),
            "--suppress-health-check",
            "all",
            "--request-timeout",
            "60",
            "--no-shrink",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = proc.stdout[-3000:] + proc.stderr[-1000:]
    assert proc.returncode == 0, summary
    m = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    assert m, summary
    generated, passed = int(m.group(1)), int(m.group(2))
    assert passed == generated, summary

    # the HAR file holds the requests sent (repeats once): every error answer has the documented body
    entries = json.loads(har.read_text())["log"]["entries"]
    per_operation = Counter(
        _operation_of(e["request"]["method"], e["request"]["url"].split("?")[0].replace(server.url, ""), operations)
        for e in entries
    )
    statuses = [e["response"]["status"] for e in entries]
    assert max(statuses) < 500
    for e in entries:
        if e["response"]["status"] >= 400:
            content = e["response"]["content"]
            text = content.get("text", "")
            if content.get("encoding") == "base64":
                text = base64.b64decode(text).decode()
            body = json.loads(text)
            assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body

    # every operation in the schema was exercised, those taking input with (nearly) all their cases
    assert {"/v1/score", "/score", "/v1/references"} <= {path for _, path in operations}
    for op, takes_input in operations.items():
        floor = int(0.9 * EXAMPLES) if takes_input else 1
        assert per_operation[op] >= floor, f"{op}: {per_operation[op]} requests (want ≥ {floor})\n{summary}"
    print(
        f"\nschemathesis: {generated} cases generated and passed, {len(entries)} distinct requests over "
        f"{len(per_operation)} operations; statuses {sorted(set(statuses))}"
    )
