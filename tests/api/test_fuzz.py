"""schemathesis against the service's own OpenAPI schema, over real HTTP: no 5xx, every error in
the documented body. The case count scales with REWARDSERVE_FUZZ_EXAMPLES (per operation)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MIN_CASES = int(os.environ.get("REWARDSERVE_FUZZ_MIN_CASES", "2000"))


def _st() -> str:
    found = shutil.which("st") or str(Path(sys.executable).parent / "st")
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail("schemathesis is not installed")
        pytest.skip("schemathesis is not installed")
    return found


def test_schemathesis_finds_no_server_error(server, tmp_path):
    examples = os.environ.get("REWARDSERVE_FUZZ_EXAMPLES", "400")
    har = tmp_path / "run.har"
    proc = subprocess.run(
        [_st(), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", examples,
         "--seed", "1", "--workers", "4", "--phases", "examples,fuzzing", "--report", "har",
         "--report-har-path", str(har), "--suppress-health-check", "all", "--request-timeout", "60", "--no-shrink"],
        capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    m = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    assert m, proc.stdout[-2000:]
    generated, passed = int(m.group(1)), int(m.group(2))
    assert generated >= MIN_CASES and passed == generated, m.group(0)
    # the HAR file holds the requests sent (repeats once): every error answer has the documented body
    entries = json.loads(har.read_text())["log"]["entries"]
    operations = {(e["request"]["method"], e["request"]["url"].split("?")[0].replace(server.url, "")) for e in entries}
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
    print(f"\nschemathesis: {generated} cases generated and passed, {len(entries)} distinct requests over "
          f"{len(operations)} operations; statuses {sorted(set(statuses))}")
    for path in ("/v1/score", "/score", "/v1/references"):
        assert any(p == path for _, p in operations), path
