"""One source of truth for the config: the embedded default (service/rewardserve/data/default.yaml).
Each deploy config lists, key by key in its header, where its effective settings differ from the
default's and why; a difference not listed, or a listed one that is gone or has another value, fails."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO

DEPLOY_CONFIGS = ["k8s/base/config.yaml", "k8s/overlays/gpu/config.yaml", "docker/config.yaml"]
MARKER = "# Where this file differs from the embedded default"
# "#   dotted.key: value — why" (the why may continue on lines indented further)
ENTRY = re.compile(r"#   ([\w.-]+): (.+?) — (\S.*)$")


def flat(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, (*prefix, k)))
        else:
            out[".".join((*prefix, k))] = v
    return out


def effective(path: Path | None) -> dict[str, Any]:
    from rewardserve.config import load_settings

    return flat(load_settings(path).model_dump(mode="json", exclude={"base_dir"}))


def documented(path: Path) -> dict[str, tuple[Any, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert any(ln.startswith(MARKER) for ln in lines), f"{path.relative_to(REPO)}: no '{MARKER} …' header"
    start = next(i for i, ln in enumerate(lines) if ln.startswith(MARKER))
    out: dict[str, tuple[Any, str]] = {}
    for ln in lines[start + 2 :]:
        if not ln.startswith("#"):
            break
        m = ENTRY.match(ln)
        if m:
            out[m.group(1)] = (yaml.safe_load(m.group(2)), m.group(3))
    return out


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch):
    import os

    for k in list(os.environ):
        if k.upper().startswith("REWARDSERVE_"):
            monkeypatch.delenv(k)


def problems(path: Path) -> list[str]:
    """What the header of the deploy config at ``path`` gets wrong (empty: nothing)."""
    default, deploy = effective(None), effective(path)
    differs = {k: deploy.get(k) for k in set(default) | set(deploy) if default.get(k) != deploy.get(k)}
    listed = documented(path)
    out = [
        f"differs from the embedded default without saying why: {k}: {default.get(k)!r} → {differs[k]!r} "
        f"(add '#   {k}: VALUE — why' under the '{MARKER} …' header, or use the default)"
        for k in sorted(set(differs) - set(listed))
    ]
    out += [f"lists a difference that is not there (any more): {k}" for k in sorted(set(listed) - set(differs))]
    for k, (value, why) in listed.items():
        if k in differs and value != differs[k]:
            out.append(f"the header says {k}: {value!r}, the file gives {differs[k]!r}")
        if len(why) < 10:
            out.append(f"{k}: say why")
    return out


@pytest.mark.parametrize("rel", DEPLOY_CONFIGS)
def test_deploy_config_states_every_difference_from_the_default(rel):
    found = problems(REPO / rel)
    assert not found, f"{rel}: " + "; ".join(found)


def test_an_undocumented_difference_fails(tmp_path):
    p = tmp_path / "config.yaml"
    text = (REPO / "docker" / "config.yaml").read_text(encoding="utf-8")
    p.write_text(text.replace("batching:\n", "batching:\n  max_wait_ms: 2\n"))
    found = problems(p)
    assert len(found) == 1 and "batching.max_wait_ms: 0.0 → 2.0" in found[0], found
    p.write_text(text.replace("host: 0.0.0.0 —", "host: 0.0.0.1 —"))
    assert problems(p) == ["the header says host: '0.0.0.1', the file gives '0.0.0.0'"]
