"""The three distributions: wheels build, dependencies point one way, and the client wheel installs
alone into a fresh virtualenv without torch and scores against a live server."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from rewardclient import RewardClient

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {"rewardclient": REPO / "client", "rewardserve": REPO / "service", "rewardlab": REPO / "lab"}
# what each package may import besides the standard library and its own modules
ALLOWED = {
    "rewardclient": {"httpx"},
    "rewardserve": {"rewardclient"},
    "rewardlab": {"rewardclient", "rewardserve"},
}
OURS = set(DISTRIBUTIONS)


def imported_top_levels(package_dir: Path) -> dict[str, set[str]]:
    """Every absolute import in the package's files (at any depth: lazy imports count), by top-level name."""
    found: dict[str, set[str]] = {}
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("package", list(DISTRIBUTIONS))
def test_dependencies_point_one_way(package):
    imports = imported_top_levels(DISTRIBUTIONS[package] / package)
    ours = {name: files for name, files in imports.items() if name in OURS - {package}}
    assert set(ours) <= ALLOWED[package], f"{package} imports {sorted(ours)} in {sorted(set().union(*ours.values()))}"
    if package == "rewardclient":  # the light client: the standard library and httpx, nothing else
        third_party = {n: f for n, f in imports.items() if n not in sys.stdlib_module_names and n != package}
        assert set(third_party) <= ALLOWED[package], third_party


def test_declared_dependencies_match():
    meta = {
        name: tomllib.loads((d / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        for name, d in DISTRIBUTIONS.items()
    }
    assert meta["rewardclient"]["dependencies"] == ["httpx>=0.27"]
    assert any(r.startswith("rewardclient") for r in meta["rewardserve"]["dependencies"])
    assert not any(r.startswith("rewardlab") for r in meta["rewardserve"]["dependencies"])
    assert {r.split("[")[0].split("=")[0] for r in meta["rewardlab"]["dependencies"]} >= {"rewardclient", "rewardserve"}
    assert meta["rewardserve"]["scripts"] == {"rewardserve": "rewardserve.cli:main"}
    assert meta["rewardlab"]["entry-points"]["rewardserve.commands"] == {"rewardlab": "rewardlab.cli:add_commands"}


def test_every_lab_command_is_added_by_rewardlab():
    from rewardserve.cli import LAB_COMMANDS, _needs_lab, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(LAB_COMMANDS) <= set(sub.choices)
    assert all(sub.choices[name].get_default("func") is not _needs_lab for name in LAB_COMMANDS)


def test_the_command_line_loads_no_training_or_serving_stack():
    """``rewardserve --help`` with every command added imports none of rewardlab's ``train`` extra (the
    images install rewardlab without it) and nothing heavy of the server."""
    code = (
        "import sys; from rewardserve.cli import build_parser; build_parser(); "
        "print(' '.join(m for m in ('trl', 'datasets', 'matplotlib', 'gguf', 'accelerate', 'torch', "
        "'transformers', 'fastapi') if m in sys.modules))"
    )
    assert _run([sys.executable, "-c", code]).stdout.strip() == ""


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The three wheels, built from copies of the source folders (nothing is written into the checkout)."""
    root = tmp_path_factory.mktemp("wheels")
    skip = shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    src = [shutil.copytree(d, root / "src" / d.name, ignore=skip) for d in DISTRIBUTIONS.values()]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", *src])
    built = {p.name.split("-")[0]: p for p in (root / "dist").glob("*.whl")}
    assert set(built) == OURS, built
    return built


def test_wheels_hold_their_own_package_only(wheels):
    for name, whl in wheels.items():
        with zipfile.ZipFile(whl) as z:
            tops = {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
            names = z.namelist()
        assert tops == {name}, (name, tops)
        requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
        if name == "rewardclient":
            assert [r for r in requires if "extra ==" not in r] == ["httpx>=0.27"]
        if name == "rewardserve":
            assert "rewardserve/data/heads/helpful.safetensors" in names and "rewardserve/data/default.yaml" in names


CLIENT_SCRIPT = """
import importlib.util, json, sys
from rewardclient import AsyncRewardClient, RewardClient
import rewardclient.trl, rewardclient.verl
absent = [m for m in ("torch", "transformers", "rewardserve", "rewardlab", "numpy", "fastapi")
          if importlib.util.find_spec(m) is not None]
with RewardClient(sys.argv[1]) as rc:
    results = rc.score([("How do I boil an egg?", "Simmer it for 9 minutes."),
                        {"prompt": [{"role": "user", "content": "Hi"}], "response": "Hello!", "id": "chat"}],
                       models=["a", "cls"])
print(json.dumps({"importable": absent, "aggregate": [r.aggregate for r in results], "ids": [r.id for r in results],
                  "raw": [r.raw for r in results]}))
"""


@pytest.mark.slow
def test_client_wheel_installs_alone_without_torch_and_scores(wheels, server, tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    _run([sys.executable, "-m", "venv", venv], env=env)
    py = venv / "bin" / "python"
    # the wheel alone; its one dependency (httpx) comes from the package index
    _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheels["rewardclient"]], env=env)
    out = json.loads(_run([py, "-c", CLIENT_SCRIPT, server.url], env=env, cwd=tmp_path).stdout)
    assert out["importable"] == []  # no torch, no server, no tooling in this environment
    with RewardClient(server.url) as rc:  # the same answers as the development install's client
        here = rc.score(
            [
                ("How do I boil an egg?", "Simmer it for 9 minutes."),
                {"prompt": [{"role": "user", "content": "Hi"}], "response": "Hello!", "id": "chat"},
            ],
            models=["a", "cls"],
        )
    assert out["ids"] == [None, "chat"]
    assert out["aggregate"] == pytest.approx([r.aggregate for r in here], abs=1e-6)
    for raw, r in zip(out["raw"], here, strict=True):
        assert raw == pytest.approx(r.raw, abs=1e-6)

    # the server's wheel next to it, without rewardlab: its lab commands say how to get them (the
    # command line reads the config classes; the model stack — torch, transformers — is not needed)
    _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", wheels["rewardserve"]], env=env)
    _run(
        [
            py,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "pydantic>=2.11",
            "pydantic-settings>=2.2",
            "pyyaml>=6",
        ],
        env=env,
    )
    cli = venv / "bin" / "rewardserve"
    assert "calibrate" in _run([cli, "--help"], env=env).stdout
    r = subprocess.run(
        [cli, "calibrate", "--prompts", "p.jsonl", "--samples", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2 and "pip install rewardlab" in r.stderr and "pip install ./lab" in r.stderr, r.stderr
    r = subprocess.run([cli, "serve", "--no-such-flag"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "unrecognized arguments: --no-such-flag" in r.stderr
