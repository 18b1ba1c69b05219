"""Shared fixtures: tiny real checkpoints in a temp dir, configs, and live uvicorn servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rewardlab import tiny_models
from rewardserve.app import create_app
from rewardserve.config import Settings
from rewardserve.service_process import free_port


def pytest_collection_modifyitems(config, items):
    """The files with a test marked ``slow`` first, each file's tests together and in their order:
    pytest-xdist hands out whole files in this order (``--dist loadfile``, pyproject.toml), so the
    longest start at once, side by side, instead of one of them starting last and running alone."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


SHARED_DATA = Path(
    os.environ.get("REWARDSERVE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
TINY_HIDDEN = 32


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints: encoder classifier, decoder classifiers (with/without chat template),
    an encoder with two heads."""
    root = tmp_path_factory.mktemp("tiny")
    paths = {
        "enc_cls": tiny_models.make_encoder_classifier(root / "enc_cls"),
        "dec_chat": tiny_models.make_decoder_classifier(root / "dec_chat", chat_template=True, seed=1),
        "dec_plain": tiny_models.make_decoder_classifier(root / "dec_plain", chat_template=False, seed=2),
        "encoder": tiny_models.make_encoder(root / "encoder", seed=3),
    }
    paths["head_a"] = tiny_models.make_head(root / "head_a.safetensors", 3 * TINY_HIDDEN, hidden=0, seed=4)
    paths["head_b"] = tiny_models.make_head(root / "head_b.safetensors", 3 * TINY_HIDDEN, hidden=8, seed=5)
    return paths


def tiny_settings(tiny: dict[str, Path], tmp_path: Path, **overrides) -> Settings:
    """Two backbones: an encoder with heads 'a' and 'b', and the encoder classifier 'cls'."""
    data = {
        "references": {"store": f"sqlite:///{tmp_path / 'refs.db'}"},
        "batching": {"max_wait_ms": 2},
        "openrlhf": {"models": ["a", "cls"]},
        "backbones": {
            "enc": {
                "kind": "encoder_head",
                "path": str(tiny["encoder"]),
                "max_length": 64,
                "models": {
                    "a": {"head": str(tiny["head_a"])},
                    "b": {"head": str(tiny["head_b"]), "missing_reference": "error"},
                },
            },
            "clsbb": {
                "kind": "sequence_classifier",
                "path": str(tiny["enc_cls"]),
                "max_length": 64,
                "models": {"cls": {"transform": "identity"}},
            },
        },
    }
    for k, v in overrides.items():
        data[k] = v
    return Settings(**data)


class LiveServer:
    """A real uvicorn server on a free loopback port, in a thread of the test process."""

    def __init__(self, app, wait_ready: bool = True):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", timeout_graceful_shutdown=10
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.wait_ready = wait_ready

    @property
    def state(self):
        return self.app.state.rs

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        if self.wait_ready:
            while httpx.get(f"{self.url}/readyz").status_code != 200:
                if self.state.load_error or time.monotonic() > deadline:
                    raise RuntimeError(f"service not ready: {self.state.load_error}")
                time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class RedisServer:
    """A real redis-server on a free loopback port (AOF on, so a restart keeps data)."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir, self.port = workdir, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _redis_available() -> bool:
    return shutil.which("redis-server") is not None


def worker_database(url: str, worker: str | None) -> str:
    """``url`` with its database number moved up by the pytest-xdist worker's index (gw0 keeps it,
    gw1 the next, …): side-by-side workers never empty each other's database."""
    if not worker or not worker.startswith("gw"):
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0) + int(worker[2:])
    if db > 15:
        raise RuntimeError(f"{url}: Redis has 16 databases, too few for pytest-xdist worker {worker}")
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A Redis URL: REWARDSERVE_TEST_REDIS_URL (as .ci/run sets; each pytest-xdist worker its own
    database of that server), else a redis-server started here (one per worker).
    Without either, the Redis tests fail under CI and are skipped elsewhere."""
    url = os.environ.get("REWARDSERVE_TEST_REDIS_URL")
    if url:
        yield worker_database(url, os.environ.get("PYTEST_XDIST_WORKER"))
        return
    if not _redis_available():
        if os.environ.get("CI"):
            pytest.fail("CI needs Redis: set REWARDSERVE_TEST_REDIS_URL or install redis-server")
        pytest.skip("no redis-server installed and REWARDSERVE_TEST_REDIS_URL unset")
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv.url
    srv.stop()


@pytest.fixture
def fresh_redis_url(redis_url):
    """The test Redis, emptied (a test owns its database while it runs)."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    """Each reference-store test runs against both real stores."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'refs.db'}"
    return request.getfixturevalue("fresh_redis_url")


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """A live server with the tiny two-backbone config (shared by a test module)."""
    settings = tiny_settings(tiny, tmp_path_factory.mktemp("srv"))
    with LiveServer(create_app(settings)) as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
