"""Reference storage behind the HTTP routes: uploads (values, or base-policy samples scored and
reduced to a quantile), lookups, a set's export, import and deletion.

``ReferenceService`` takes the parsed request (``schemas``) and returns the typed answer; what can
go wrong is a domain error (``errors.py``). The routes (``api/routes.py``) only authorize and call.
Samples are scored through the ``BackboneRegistry``, never through the scoring pipeline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

from pydantic_core import to_json

from rewardclient.protocol import DEFAULT_QUANTILE, Prompt, plain_prompt

from .. import lsc
from ..config import Settings
from ..errors import (
    InvalidInput,
    ReferenceNotFound,
    ReferenceSetNotFound,
    TextTooLong,
    TooManyReferences,
    TooManySamples,
)
from ..limits import check_messages
from ..normalise import Normaliser
from ..registry import BackboneRegistry, ScoreInput
from ..schemas import (
    ReferenceSetContents,
    ReferenceSetDeleted,
    ReferenceSetImported,
    ReferenceSetInfo,
    ReferenceSetList,
    ReferencesFound,
    ReferencesLookup,
    ReferencesStored,
    ReferencesUpload,
    StoredReference,
)
from . import prompt_fingerprint
from .base import SET_DEFAULT_FINGERPRINT, Reference, ReferenceStore

SAMPLES_PER_ITEM_LIMIT = 16  # an upload may hold 16 × max_items_per_request samples


def _check_count(n: int, limit: int) -> None:
    if n > limit:
        raise TooManyReferences(f"{n} entries; the limit (max_references_per_upload) is {limit}")


def _check_text(body: ReferencesUpload, limit: int) -> None:
    """An upload's texts under the limit of a scored item (``max_text_chars``: prompt, roles included,
    plus response): each entry's prompt, and the prompt with each of its samples."""
    for i, e in enumerate(body.entries):
        p = len(e.prompt) if isinstance(e.prompt, str) else sum(len(m.role) + len(m.content) for m in e.prompt)
        n = p + max((len(s) for s in e.samples or ()), default=0)
        if n > limit:
            raise TextTooLong(
                f"entries[{i}] has {n} characters (prompt + its longest sample); the limit (max_text_chars) is {limit}"
            )


class ReferenceService:
    def __init__(self, settings: Settings, registry: BackboneRegistry, store: ReferenceStore):
        self.settings, self.registry, self.store = settings, registry, store
        self.normalise = Normaliser(settings)

    async def upload(self, body: ReferencesUpload) -> ReferencesStored:
        """Store ``body``'s references: given ``value``s as they are, ``samples`` scored by the model and
        reduced to their ``quantile`` (default 0.85); prompts are stored under their fingerprint (a
        templated string prompt under its messages', like ``/v1/score`` reads it)."""
        lim = self.settings.limits
        _check_count(len(body.entries), lim.max_references_per_upload)
        check_messages("entries", body.entries, lim)
        _check_text(body, lim.max_text_chars)
        (model,) = self.registry.select([body.model])
        if not body.entries and body.default is None:
            raise InvalidInput("give 'entries', a 'default', or both")
        n_entries = len(body.entries)
        prompts = [
            n.prompt
            for n in await self.normalise([plain_prompt(e.prompt) for e in body.entries], [""] * n_entries, None)
        ]
        sample_pairs: list[tuple[Prompt, str]] = []
        owners: list[int] = []
        for i, (e, p) in enumerate(zip(body.entries, prompts)):
            if (e.value is None) == (e.samples is None):
                raise InvalidInput(f"entries[{i}]: give exactly one of 'value' or 'samples'")
            if e.samples is not None and e.n_samples is not None:
                raise InvalidInput(f"entries[{i}]: 'n_samples' goes with 'value' (with 'samples' it is their count)")
            if e.samples is not None:
                sample_pairs.extend((p, s) for s in e.samples)
                owners.extend([i] * len(e.samples))
        q = body.quantile if body.quantile is not None else DEFAULT_QUANTILE
        per_entry: dict[int, list[float]] = {}
        if sample_pairs:
            if len(sample_pairs) > lim.max_items_per_request * SAMPLES_PER_ITEM_LIMIT:
                raise TooManySamples(f"{len(sample_pairs)} samples in one upload; send fewer per request")
            raw = (await self.registry.raw_rewards([ScoreInput(p, r) for p, r in sample_pairs], [model])).raw
            for k, owner in enumerate(owners):
                per_entry.setdefault(owner, []).append(float(raw[k, 0]))
        values: list[float] = []
        n_samples: list[int | None] = []
        for i, e in enumerate(body.entries):
            if e.samples is not None:
                values.append(lsc.quantile(per_entry[i], q))
                n_samples.append(len(e.samples))
            else:
                assert e.value is not None  # exactly one of value / samples (checked above)
                values.append(float(e.value))
                n_samples.append(e.n_samples)
        fps = [prompt_fingerprint(p) for p in prompts]
        revision, now = self.registry.models[model].revision, time.time()

        def ref(value: float, n: int | None, from_samples: bool) -> Reference:
            quantile = q if from_samples or body.quantile is not None else None
            return Reference(
                value=value, revision=revision, quantile=quantile, n_samples=n, policy=body.policy, updated_at=now
            )

        entries = [(fp, ref(v, n, e.samples is not None)) for fp, v, n, e in zip(fps, values, n_samples, body.entries)]
        if body.default is not None:
            entries.append((SET_DEFAULT_FINGERPRINT, ref(body.default.value, body.default.n_samples, False)))
        await self.store.put_many(model, entries, body.reference_set)
        return ReferencesStored(
            model=model, reference_set=body.reference_set, stored=len(entries), fingerprints=fps, values=values
        )

    async def lookup(self, body: ReferencesLookup) -> ReferencesFound:
        """One set's stored references of one model for many prompt fingerprints, and its default."""
        (model,) = self.registry.select([body.model])
        lim = self.settings.limits.max_references_per_upload
        if len(body.prompt_fingerprints) > lim:
            raise TooManyReferences(f"at most {lim} fingerprints per lookup")
        fps = [f.lower() for f in body.prompt_fingerprints]
        found = await self.store.get_many(model, fps + [SET_DEFAULT_FINGERPRINT], body.reference_set)
        return ReferencesFound(
            model=model,
            reference_set=body.reference_set,
            revision=self.registry.models[model].revision,
            references={fp: found.get(fp) for fp in fps},
            default=found.get(SET_DEFAULT_FINGERPRINT),
        )

    async def get(self, model: str, fingerprint: str, reference_set: str) -> StoredReference:
        """The stored reference of ``model`` for one prompt fingerprint in a set (``ReferenceNotFound``)."""
        (model,) = self.registry.select([model])
        ref = await self.store.get(model, fingerprint.lower(), reference_set)
        if ref is None:
            raise ReferenceNotFound(
                f"no stored reference for model {model!r} and prompt fingerprint {fingerprint} "
                f"in reference set {reference_set!r}"
            )
        return StoredReference(
            reference_set=reference_set, model=model, prompt_fingerprint=fingerprint.lower(), **ref.to_dict()
        )

    async def import_set(self, name: str, body: ReferenceSetContents) -> ReferenceSetImported:
        """Insert or replace ``body``'s entries in set ``name``, every field kept; every model must be served."""
        _check_count(len(body.references), self.settings.limits.max_references_per_upload)
        by_model: dict[str, list[tuple[str, Reference]]] = {}
        for row in body.references:
            by_model.setdefault(row.model, []).append(
                (
                    row.prompt_fingerprint,
                    Reference(row.value, row.revision, row.quantile, row.n_samples, row.policy, row.updated_at),
                )
            )
        self.registry.select(list(by_model))
        for model, entries in by_model.items():
            await self.store.put_many(model, entries, name)
        return ReferenceSetImported(reference_set=name, imported=len(body.references))


async def list_sets(store: ReferenceStore, visible: Iterable[str] | None = None) -> ReferenceSetList:
    """The sets that hold entries, with entries per model; only ``visible`` ones when given."""
    allowed = None if visible is None else set(visible)
    sets = await store.sets()
    return ReferenceSetList(
        reference_sets=[
            ReferenceSetInfo(name=n, models=m, references=sum(m.values()))
            for n, m in sets.items()
            if allowed is None or n in allowed
        ]
    )


async def export_set(store: ReferenceStore, name: str) -> AsyncIterator[bytes]:
    """The export of set ``name``, a ``ReferenceSetContents`` JSON document, as pieces to stream: the
    store is read a page at a time (``iter_rows``) and each page encoded in a worker thread, so neither
    memory nor the event loop ever holds the whole set (``ReferenceSetNotFound`` when it holds none,
    raised before anything is sent). A store failure later ends the stream before the closing
    bracket: the client sees a cut-off document, never a short one that parses."""
    pages = store.iter_rows(name)
    first = await anext(pages, None)
    if not first:
        await pages.aclose()
        raise ReferenceSetNotFound(f"reference set {name!r} holds no references")
    return _export_document(name, first, pages)


async def _export_document(
    name: str,
    first: list[tuple[str, str, str, Reference]],
    rest: AsyncGenerator[list[tuple[str, str, str, Reference]], None],
) -> AsyncIterator[bytes]:
    try:
        yield b'{"reference_set":' + to_json(name) + b',"references":['
        yield await asyncio.to_thread(_export_rows, first)
        async for page in rest:
            yield b"," + await asyncio.to_thread(_export_rows, page)
        yield b"]}"
    finally:
        await rest.aclose()


def _export_rows(rows: list[tuple[str, str, str, Reference]]) -> bytes:
    """Rows as the comma-separated ``ReferenceRow`` objects of an export (without brackets)."""
    return to_json([{"model": m, "prompt_fingerprint": fp, **ref.to_dict()} for _, m, fp, ref in rows])[1:-1]


async def delete_set(store: ReferenceStore, name: str) -> ReferenceSetDeleted:
    """Delete every entry of set ``name`` (``ReferenceSetNotFound`` when it holds none)."""
    n = await store.delete_set(name)
    if not n:
        raise ReferenceSetNotFound(f"reference set {name!r} holds no references")
    return ReferenceSetDeleted(reference_set=name, deleted=n)
