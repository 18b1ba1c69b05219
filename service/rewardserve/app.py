"""The application factory: settings → FastAPI app with routes, middleware and a model loader.

The app owns one ``BackboneRegistry`` (every backbone and its models), one scoring pipeline and one
reference service over it. Models load in the background after start-up, so ``/healthz`` answers
at once and ``/readyz`` turns 200 only when every backbone is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .api import openrlhf, routes, slime
from .api.errors import install_error_handlers
from .api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from .backends import build_backend
from .config import Settings, check_exposure, load_settings
from .health import ForwardHealth
from .metrics import Metrics
from .references import open_store
from .references.redis_client import redact
from .references.service import ReferenceService
from .registry import BackboneRegistry, BackendFactory
from .scoring import Scorer
from .state import AppState

log = logging.getLogger("rewardserve")


GIL_SWITCH_SECONDS = 0.001


def create_app(
    settings: Settings | None = None,
    backend_factory: BackendFactory = build_backend,
    exit_on_load_failure: bool = False,
) -> FastAPI:
    settings = settings or load_settings()
    check_exposure(settings)  # no app listens beyond loopback without keys, however it is started
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # a worker thread running Python (prompt parsing, a large body read in pieces) hands the GIL to the
    # event loop after at most this long (default 5 ms; each of a request's steps may wait that long)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    metrics, health = Metrics(), ForwardHealth.from_config(settings.health)
    registry = BackboneRegistry(settings, metrics, health, backend_factory)
    state = AppState(settings=settings, metrics=metrics, health=health, registry=registry)

    async def load_models() -> None:
        try:
            await registry.load()
            # the loaded models' objects never die: out of the collector's generations, a full collection
            # (set off by a large body's allocations) no longer walks them while holding the GIL
            gc.freeze()
        except Exception:
            log.exception("loading models failed")
            if exit_on_load_failure:
                os.kill(os.getpid(), signal.SIGTERM)

    async def recheck_failing_backbones() -> None:
        """An unready pod gets no traffic: retry one small item of each failing backbone, so that a
        fault that cleared shows without waiting for a restart."""
        while True:
            await asyncio.sleep(settings.health.recheck_seconds)
            await registry.recheck()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = state.store = open_store(settings.references.store)
        log.info("reference store: %s", redact(settings.references.store))  # never the password
        state.scorer = Scorer(settings, registry, store, metrics)
        state.references = ReferenceService(settings, registry, store)
        loader = asyncio.create_task(load_models(), name="load-models")
        rechecker = asyncio.create_task(recheck_failing_backbones(), name="recheck-backbones")
        try:
            yield
        finally:
            state.draining = True
            loader.cancel()
            rechecker.cancel()
            await asyncio.gather(loader, rechecker, return_exceptions=True)
            await registry.stop()
            await store.close()

    app = FastAPI(
        title="rewardserve",
        version=__version__,
        description=(
            "Reward models for RLHF behind one API: raw, LSC-transformed (log σ(r − r_ref)) and aggregated rewards."
        ),
        lifespan=lifespan,
    )
    app.state.rs = state
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(openrlhf.router)
    app.include_router(slime.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    keys = settings.load_api_keys()
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys, open_routes=settings.open_routes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
