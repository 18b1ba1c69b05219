"""What every route shares: typed FastAPI dependencies (the app's state, its registry, scoring
pipeline and reference service, each ready to serve; the request's API key), the key's permission
check, and cancelling work whose client has gone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from ..config import ApiKey
from ..errors import ClientGone, Forbidden, NotReady
from ..references.service import ReferenceService
from ..registry import BackboneRegistry
from ..scoring import Scorer
from ..state import AppState
from .middleware import API_KEY_SCOPE

T = TypeVar("T")


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.rs
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_registry(state: StateDep) -> BackboneRegistry:
    """The backbone registry. Handlers ask ``registry.check_ready()`` themselves, after the request's
    own checks (authorization), so that the order of errors stays that of the handler."""
    return state.registry


async def get_scorer(state: StateDep) -> Scorer:
    """The scoring pipeline (made at start-up, before the first request)."""
    if state.scorer is None:
        raise NotReady("the service is not ready (models are loading)")
    return state.scorer


async def get_references(state: StateDep) -> ReferenceService:
    """The reference service (made at start-up, before the first request)."""
    if state.references is None:
        raise NotReady("the service is not ready (models are loading)")
    return state.references


async def get_api_key(request: Request) -> ApiKey | None:
    """The request's API key (matched by ``ApiKeyMiddleware``); None when no keys are configured."""
    key: ApiKey | None = request.scope.get(API_KEY_SCOPE)
    return key


RegistryDep = Annotated[BackboneRegistry, Depends(get_registry)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
ReferencesDep = Annotated[ReferenceService, Depends(get_references)]
KeyDep = Annotated[ApiKey | None, Depends(get_api_key)]


def authorize(key: ApiKey | None, reference_set: str | None = None, admin: bool = False) -> None:
    """``Forbidden`` unless ``key`` may do this: ``admin`` (write or delete references) needs scope
    admin; ``reference_set`` must be among the key's sets when it has a list. Without keys
    configured every request may do everything."""
    if key is None:
        return
    if admin and key.scope != "admin":
        raise Forbidden(f"this API key has scope {key.scope!r}: writing or deleting references needs scope 'admin'")
    if reference_set is not None and key.sets is not None and reference_set not in key.sets:
        raise Forbidden(
            f"this API key may not use reference set {reference_set!r}; "
            f"it may use: {', '.join(sorted(key.sets)) or '(none)'}"
        )


def visible_sets(key: ApiKey | None) -> frozenset[str] | None:
    """The reference sets ``key`` may see; None: every set."""
    return None if key is None else key.sets


async def _until_disconnect(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client goes away first, cancel it (its queued items are dropped)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ClientGone("the client closed the connection")
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
