"""The application factory: settings → FastAPI app with routes, middleware and a model loader.

Models load in the background after start-up, so ``/healthz`` answers at once and ``/readyz``
turns 200 only when every backbone is loaded, warmed up and its batcher running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from . import __version__
from .api.errors import install_error_handlers
from .api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from .api.routes import router
from .backends import Backend, build_backend
from .config import BackboneConfig, Settings, load_settings
from .health import ForwardHealth
from .metrics import Metrics
from .references import ReferenceStore, open_store
from .references.redis_client import redact
from .scoring import Scorer

log = logging.getLogger("rewardserve")

BackendFactory = Callable[[str, BackboneConfig, Settings], Backend]


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    scorer: Scorer | None = None
    store: ReferenceStore | None = None
    loaded: bool = False  # every model loaded and warmed up: scoring works
    draining: bool = False  # shutting down: /readyz says 503, in-flight and new requests are still served
    load_error: str | None = None
    health: ForwardHealth | None = None  # forward failures / hung forwards (health.py)

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and not (self.health and self.health.not_ready())


def create_app(
    settings: Settings | None = None,
    backend_factory: BackendFactory = build_backend,
    exit_on_load_failure: bool = False,
) -> FastAPI:
    settings = settings or load_settings()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    state = AppState(settings=settings, metrics=Metrics(), health=ForwardHealth.from_config(settings.health))

    async def load_models() -> None:
        try:
            for name in settings.backbones:
                backend = await state.scorer.load_backbone(name, backend_factory)  # type: ignore[union-attr]
                state.scorer.batchers[name].health = state.health  # type: ignore[union-attr]
                state.metrics.backbone_loaded(name, backend.model_names)  # every series has a sample from now on
                log.info("backbone %s loaded: models %s", name, ", ".join(backend.model_names))
            state.loaded = True
            log.info("ready: %d models", len(state.scorer.models))  # type: ignore[union-attr]
        except Exception as e:
            state.load_error = f"loading models failed: {type(e).__name__}: {e}"
            log.exception("loading models failed")
            if exit_on_load_failure:
                os.kill(os.getpid(), signal.SIGTERM)

    async def recheck_failing_backbones() -> None:
        """An unready pod gets no traffic: retry one small forward of each failing backbone (the
        warm-up item), so that a fault that cleared shows without waiting for a restart."""
        while True:
            await asyncio.sleep(settings.health.recheck_seconds)
            for name in state.health.failing_backbones():  # type: ignore[union-attr]
                backend = state.scorer.backends.get(name) if state.scorer else None
                if backend is None:
                    continue
                try:
                    with state.health.watch(name):  # type: ignore[union-attr]
                        await asyncio.to_thread(backend.warmup)
                    log.warning("backbone %s: a check forward succeeded; ready again", name)
                except Exception as e:
                    log.warning("backbone %s: the check forward failed too: %s: %s", name, type(e).__name__, e)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.store = open_store(settings.references.store)
        log.info("reference store: %s", redact(settings.references.store))  # never the password
        state.scorer = Scorer(settings, state.store, state.metrics)
        loader = asyncio.create_task(load_models(), name="load-models")
        rechecker = asyncio.create_task(recheck_failing_backbones(), name="recheck-backbones")
        try:
            yield
        finally:
            state.draining = True
            loader.cancel()
            rechecker.cancel()
            await asyncio.gather(loader, rechecker, return_exceptions=True)
            await state.scorer.stop()
            await state.store.close()

    app = FastAPI(
        title="rewardserve",
        version=__version__,
        description="Reward models for RLHF behind one API: raw, LSC-transformed (log σ(r − r_ref)) and aggregated rewards.",
        lifespan=lifespan,
    )
    app.state.rs = state
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    keys = settings.load_api_keys()
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys, open_routes=settings.open_routes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
