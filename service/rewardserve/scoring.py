"""Scoring: resolve models and references, split items per backbone, batch, transform, aggregate.

This is the path of one ``POST /v1/score`` after validation: the route hands the parsed request to
``Scorer.score``, which returns the response (``schemas.ScoreResponse``). What can go wrong is
raised as a domain error (``errors.py``); ``api/errors.py`` says how each goes on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from rewardclient.protocol import Prompt, plain_prompt

from . import lsc, prompt_formats
from .backends.base import Backend, Encoded, ModelInfo
from .batcher import Batcher, Scored
from .config import BackboneConfig, ModelConfig, Settings
from .errors import (
    InvalidInput,
    MissingReference,
    NotReady,
    StaleReference,
    TextTooLong,
    TooManyItems,
    TooManyModels,
    UnknownModel,
)
from .health import ForwardHealth
from .metrics import Metrics
from .references import DEFAULT_SET, Reference, ReferenceStore
from .schemas import AggregateSpec, ModelRevision, ScoreItem, ScoreResponse, ScoreResult, Usage

BackendFactory = Callable[[str, BackboneConfig, Settings], Backend]
log = logging.getLogger("rewardserve")
_INLINE_ENCODE_MAX = 8  # encode this many items on the event loop; more go to a thread
DEFAULT_KEY = "default"  # store key of a model's calibrated default reference
T = TypeVar("T")


def _encode_all(backend: Backend, pairs: Sequence[tuple[Prompt, str]]) -> list[Encoded]:
    return [backend.encode(p, r) for p, r in pairs]


async def _in_thread_if_large(prompts: Sequence[Prompt], work: Callable[[], T]) -> T:
    """``work()`` (linear in ``prompts``) on the event loop when they are small, else in a worker thread."""
    return work() if prompt_formats.is_small(prompts) else await asyncio.to_thread(work)


@dataclass
class ServedModel:
    name: str
    backbone: str
    column: int
    config: ModelConfig
    info: ModelInfo


class Scorer:
    def __init__(self, settings: Settings, store: ReferenceStore, metrics: Metrics):
        self.settings, self.store, self.metrics = settings, store, metrics
        self.models: dict[str, ServedModel] = {}
        self.backends: dict[str, Backend] = {}
        self.batchers: dict[str, Batcher] = {}
        self.loaded = False  # every backbone loaded and warmed up: scoring works
        self.load_error: str | None = None

    def check_ready(self) -> None:
        """``NotReady`` until every backbone is loaded (or when loading failed)."""
        if not self.loaded:
            detail = f": {self.load_error}" if self.load_error else " (models are loading)"
            raise NotReady(f"the service is not ready{detail}")

    async def load(self, factory: BackendFactory, health: ForwardHealth | None = None) -> None:
        """Load, warm up and start every configured backbone (``load_backbone``), then serve; a
        failure is kept in ``load_error`` (``check_ready`` reports it) and raised."""
        try:
            for name in self.settings.backbones:
                backend = await self.load_backbone(name, factory)
                self.batchers[name].health = health
                self.metrics.backbone_loaded(name, backend.model_names)  # every series has a sample from now on
                log.info("backbone %s loaded: models %s", name, ", ".join(backend.model_names))
            self.loaded = True
            log.info("ready: %d models", len(self.models))
        except Exception as e:
            self.load_error = f"loading models failed: {type(e).__name__}: {e}"
            raise

    async def load_backbone(self, name: str, factory: BackendFactory, warmup: bool = True) -> Backend:
        """Build backbone ``name`` with ``factory(name, cfg, settings)`` (off the event loop), warm it
        up, start its batcher and serve its models."""
        cfg = self.settings.backbones[name]
        backend = await asyncio.to_thread(factory, name, cfg, self.settings)
        if warmup:
            await asyncio.to_thread(backend.warmup)
        b = cfg.batching or self.settings.batching
        on_cpu = backend.device.type == "cpu"
        cpu_threads = torch.get_num_threads() if on_cpu else None
        batcher = Batcher(
            backend,
            max_batch_tokens=b.batch_tokens_for(cfg.device),
            max_wait_ms=b.max_wait_ms,
            max_queued_tokens=b.max_queued_tokens,
            sort_by_length=b.sort_by_length,
            max_padding_ratio=b.padding_ratio_for(cfg.device),
            forward_workers=b.workers_for(cfg.device, cpu_threads or 1),
            cpu_threads=cpu_threads,
            metrics=self.metrics,
        )
        batcher.start()
        self.add_backbone(backend, batcher)
        return backend

    def add_backbone(self, backend: Backend, batcher: Batcher) -> None:
        cfg = self.settings.backbones[backend.name]
        info = backend.model_info()
        for col, name in enumerate(backend.model_names):
            self.models[name] = ServedModel(name, backend.name, col, cfg.models[name], info[name])
        self.backends[backend.name] = backend
        self.batchers[backend.name] = batcher

    async def stop(self, drain_timeout: float = 30.0) -> None:
        await asyncio.gather(*(b.stop(drain_timeout) for b in self.batchers.values()))

    # -- validation -----------------------------------------------------------------------------
    def resolve_models(self, requested: Sequence[str] | None) -> list[str]:
        names = list(dict.fromkeys(requested)) if requested else list(self.models)
        limit = self.settings.limits.max_models_per_request
        if len(names) > limit:
            raise TooManyModels(f"{len(names)} models requested; the limit (max_models_per_request) is {limit}")
        unknown = [m for m in names if m not in self.models]
        if unknown:
            raise UnknownModel(
                f"unknown model {unknown[0]!r}; served models: {', '.join(self.models) or '(none loaded)'}"
            )
        return names

    def check_items(self, items: Sequence[ScoreItem]) -> None:
        lim = self.settings.limits
        if len(items) > lim.max_items_per_request:
            raise TooManyItems(f"{len(items)} items; the limit (max_items_per_request) is {lim.max_items_per_request}")
        for i, it in enumerate(items):
            n = len(it.response) + (
                len(it.prompt) if isinstance(it.prompt, str) else sum(len(m.role) + len(m.content) for m in it.prompt)
            )
            if n > lim.max_text_chars:
                raise TextTooLong(f"items[{i}] has {n} characters; the limit (max_text_chars) is {lim.max_text_chars}")
            for m in it.reference or {}:
                if m not in self.models:
                    raise InvalidInput(f"items[{i}].reference names unknown model {m!r}")

    # -- prompt formats -----------------------------------------------------------------------------
    async def resolve_prompt_format(self, name: str | None) -> prompt_formats.Format:
        """The format named by a request (or the service's ``prompt_format``); a ``tokenizer:`` format's
        tokenizer is loaded once, off the event loop (a relative path is relative to the config file).
        Only a configured format may download a tokenizer from the hub: a request's ``tokenizer:`` names
        a local folder or a hub id already in the local cache."""
        name = self.settings.check_prompt_format(name or self.settings.prompt_format)
        if name.startswith("tokenizer:"):
            configured = name in (self.settings.prompt_format, self.settings.openrlhf.prompt_format)
            name = "tokenizer:" + self.settings.resolve_path(name[len("tokenizer:") :].strip())
            return await asyncio.to_thread(prompt_formats.resolve_format, name, configured)
        return prompt_formats.resolve_format(name)

    async def normalise(
        self, prompts: Sequence[Prompt], responses: Sequence[str], prompt_format: str | None
    ) -> list[prompt_formats.Normalised]:
        """Each (prompt, response) as the reward models read it: templated string prompts parsed back
        into messages, the responses' trailing end-of-turn markup removed (``prompt_formats``)."""
        fmt = await self.resolve_prompt_format(prompt_format)

        def run() -> list[prompt_formats.Normalised]:
            return [prompt_formats.normalise(p, r, fmt) for p, r in zip(prompts, responses)]

        # long texts, or many items of a tokenizer's template (jinja re-renders each), go to a thread
        if not prompt_formats.runs_inline(prompts, responses, fmt):
            return await asyncio.to_thread(run)
        return run()

    # -- references -------------------------------------------------------------------------------
    async def resolve_references(
        self,
        items: Sequence[ScoreItem],
        prompts: list[Prompt],
        models: list[str],
        reference_set: str = DEFAULT_SET,
        missing_reference: str | None = None,
    ) -> tuple[np.ndarray, list[dict[str, str]], list[list[str]]]:
        """r_ref per (item, model) and where it came from: ``inline`` → ``stored`` (the set's entry
        for the prompt) → ``set_default`` (the model's default in the set, ``DEFAULT_KEY``, written by
        calibration) → ``config_default`` → 422 when the model's policy, or the request's
        ``missing_reference``, is ``error`` (identity models never need a reference)."""
        refs = np.zeros((len(items), len(models)))
        sources: list[dict[str, str]] = [{} for _ in items]
        warnings: list[list[str]] = [[] for _ in items]
        fps: list[str] | None = None
        for j, m in enumerate(models):
            sm = self.models[m]
            missing = []
            for i, it in enumerate(items):
                if it.reference and m in it.reference:
                    refs[i, j] = it.reference[m]
                    sources[i][m] = "inline"
                else:
                    missing.append(i)
            if not missing:
                continue
            if fps is None:
                fps = await _in_thread_if_large(prompts, lambda: [prompt_formats.fingerprint(p) for p in prompts])
            stored = await self.store.get_many(m, sorted({fps[i] for i in missing}) + [DEFAULT_KEY], reference_set)
            stored_default = stored.get(DEFAULT_KEY)
            policy = (
                "error"
                if missing_reference == "error" and sm.config.transform == "lsc"
                else sm.config.missing_reference
            )
            for i in missing:
                ref: Reference | None = stored.get(fps[i])
                if ref is not None:
                    refs[i, j] = ref.value
                    sources[i][m] = "stored"
                    if ref.revision and ref.revision != sm.info.revision:
                        msg = (
                            f"the stored reference for model {m!r} was made with model revision {ref.revision}; "
                            f"the model is now {sm.info.revision}"
                        )
                        if self.settings.references.revision_mismatch == "reject":
                            raise StaleReference(f"items[{i}]: {msg}; recalibrate or pass items[{i}].reference")
                        warnings[i].append(msg)
                elif stored_default is not None and policy == "default":
                    refs[i, j] = stored_default.value
                    sources[i][m] = "set_default"
                elif policy == "default" or sm.config.transform == "identity":
                    refs[i, j] = sm.config.default_reference
                    sources[i][m] = "config_default"
                else:
                    why = (
                        "the request's missing_reference is 'error'"
                        if missing_reference == "error"
                        else "missing_reference policy is 'error'"
                    )
                    raise MissingReference(
                        f"items[{i}]: no reference for model {m!r} and prompt fingerprint {fps[i]} in reference set "
                        f"{reference_set!r} ({why}); pass items[{i}].reference or store one via POST /v1/references",
                    )
        return refs, sources, warnings

    # -- raw rewards ------------------------------------------------------------------------------
    async def raw_rewards(
        self, pairs: Sequence[tuple[Prompt, str]], models: list[str], timing: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Raw rewards (n_items × n_models), truncation flags (same shape) and tokens used. ``timing``
        (if given) gets seconds that partition the request's time in the scorer (they never overlap, so
        their sum is at most the total): ``encode`` (first tokenization start → the last backbone's
        items submitted), ``queue`` (→ the first forward of the request starts, 0 if one already
        has), ``forward`` (→ the last forward ends)."""
        raw = np.zeros((len(pairs), len(models)))
        trunc = np.zeros((len(pairs), len(models)), dtype=bool)
        by_backbone: dict[str, list[int]] = {}
        for j, m in enumerate(models):
            by_backbone.setdefault(self.models[m].backbone, []).append(j)
        tokens = 0
        all_futures: list[asyncio.Future[Scored]] = []
        jobs = []
        enc_start, submitted, starts, ends = time.perf_counter(), [], [], []
        try:
            for bname, cols in by_backbone.items():
                backend = self.backends[bname]
                if len(pairs) <= _INLINE_ENCODE_MAX and prompt_formats.is_small(
                    [p for p, _ in pairs], [r for _, r in pairs]
                ):
                    encs = [backend.encode(p, r) for p, r in pairs]
                else:
                    encs = await asyncio.to_thread(_encode_all, backend, pairs)
                tokens += sum(e.length for e in encs)
                submitted.append(time.perf_counter())
                futs = self.batchers[bname].submit(encs)
                all_futures.extend(futs)
                jobs.append((cols, encs, futs))
            for cols, encs, futs in jobs:
                scored = await asyncio.gather(*futs)
                starts.append(min(x.forward_start for x in scored))
                ends.append(max(x.forward_end for x in scored))
                block = np.stack([x.row for x in scored])
                for j in cols:
                    raw[:, j] = block[:, self.models[models[j]].column]
                    trunc[:, j] = [e.truncated for e in encs]
        finally:
            for f in all_futures:  # on error or client disconnect: nothing left queued for this request
                if not f.done():
                    f.cancel()
        for m in models:
            self.metrics.items_scored.labels(m).inc(len(pairs))
        if timing is not None and starts:
            enc_end = max(submitted)
            fwd_start = max(min(starts), enc_end)  # a forward that ran during a later encode counts as encode
            timing.update(
                encode=enc_end - enc_start,
                queue=max(0.0, min(starts) - enc_end),
                forward=max(0.0, max(ends) - fwd_start),
            )
        return raw, trunc, tokens

    # -- the whole request ------------------------------------------------------------------------
    async def score(
        self,
        items: Sequence[ScoreItem],
        models: Sequence[str] | None,
        aggregate: AggregateSpec | None,
        timing: dict[str, float] | None = None,
        prompt_format: str | None = None,
        reference_set: str = DEFAULT_SET,
        missing_reference: str | None = None,
    ) -> ScoreResponse:
        """The response of ``POST /v1/score``; ``timing`` (if given) gets the seconds spent
        (see ``raw_rewards``); stored references come from ``reference_set``."""
        names = self.resolve_models(models)
        agg = aggregate or AggregateSpec()
        weights = agg.weights or {}
        unknown_w = [k for k in weights if k not in names]
        if unknown_w:
            raise InvalidInput(
                f"aggregate.weights names model {unknown_w[0]!r}, which is not among the requested models {names}"
            )
        self.check_items(items)
        norm = await self.normalise(
            [plain_prompt(it.prompt) for it in items], [it.response for it in items], prompt_format
        )
        prompts = [n.prompt for n in norm]
        # the reference lookup (a store round trip per model) runs while the items wait for and run
        # their forward; the first failure fails the request and the other task is cancelled (queued
        # items of a cancelled request are dropped before their forward)
        tasks = (
            asyncio.ensure_future(self.resolve_references(items, prompts, names, reference_set, missing_reference)),
            asyncio.ensure_future(self.raw_rewards([(n.prompt, n.response) for n in norm], names, timing)),
        )
        try:
            (refs, sources, warnings), (raw, trunc, tokens) = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # no-op once done

        transforms = [self.models[m].config.transform for m in names]
        u = np.empty_like(raw)
        for j, t in enumerate(transforms):
            u[:, j] = lsc.transform(raw[:, j], refs[:, j], t)
        with_p = lsc.p_all_good_defined(agg.method, weights, transforms)
        for j, m in enumerate(names):  # fallbacks of models whose transform uses the reference
            if transforms[j] == "lsc":
                for src in ("set_default", "config_default"):
                    n = sum(1 for s in sources if s[m] == src)
                    if n:
                        self.metrics.reference_fallbacks.labels(m, src).inc(n)
        results = []
        for i, it in enumerate(items):
            r_i = dict(zip(names, raw[i].tolist()))
            u_i = dict(zip(names, u[i].tolist()))
            value = lsc.aggregate(r_i, u_i, agg.method, weights)
            item_warnings = ([norm[i].warning] if norm[i].warning else []) + warnings[i]
            # built from values computed here: no validation (model_construct); the route serializes them
            results.append(
                ScoreResult.model_construct(
                    id=it.id,
                    raw=r_i,
                    reference=dict(zip(names, refs[i].tolist())),
                    reference_source={m: sources[i][m] for m in names},
                    transformed=u_i,
                    aggregate=value,
                    # a probability only against real references: inline or stored for this prompt
                    p_all_good=lsc.p_all_good(value)
                    if with_p and all(sources[i][m] in ("inline", "stored") for m in names)
                    else None,
                    truncated=dict(zip(names, trunc[i].tolist())),
                    warnings=item_warnings or None,
                )
            )
        return ScoreResponse.model_construct(
            results=results,
            aggregate_method=agg.method,
            reference_set=reference_set,
            models={m: ModelRevision.model_construct(revision=self.models[m].info.revision) for m in names},
            usage=Usage.model_construct(items=len(items), tokens=tokens),
        )

    def describe_models(self) -> list[dict[str, Any]]:
        out = []
        for m, sm in self.models.items():
            backend = self.backends[sm.backbone]
            out.append(
                {
                    "name": m,
                    "kind": sm.info.kind,
                    "backbone": sm.backbone,
                    "source": sm.info.source,
                    "revision": sm.info.revision,
                    "device": str(backend.device),
                    "dtype": str(backend.dtype).replace("torch.", ""),
                    "max_length": backend.max_length,
                    "transform": sm.config.transform,
                    "default_reference": sm.config.default_reference,
                    "missing_reference": sm.config.missing_reference,
                    **sm.info.extra,
                }
            )
        return out
