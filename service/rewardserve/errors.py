"""Domain errors: what the core (scoring, batcher, references, backends, prompt formats) raises.

Each error says what went wrong in the core's own words and knows nothing of HTTP; ``str(e)`` is
a message a user can act on. ``api/errors.py`` maps every class here to a status, an error type
and headers in one table (``ERRORS``), TEI-router style: the core never imports ``api/``.
"""

from __future__ import annotations


class RewardServeError(Exception):
    """Base of every domain error. ``retry_after`` (seconds): when trying again may succeed, if the
    error itself knows (``Overloaded``); the API table supplies the others' ``Retry-After``."""

    retry_after: float | None = None


class InvalidInput(RewardServeError, ValueError):
    """A request the core cannot serve as given: a weight for a model not requested, a reference for
    an unknown model, an upload entry with both ``value`` and ``samples``, … (a ``ValueError`` too,
    so that pydantic validators may raise it)."""


class TooManyMessages(InvalidInput):
    """A chat prompt of more messages than ``limits.max_messages_per_prompt`` (422, like any invalid
    input; refused before the chat is validated)."""


class PromptFormatError(InvalidInput):
    """A prompt format that cannot be used: an unknown name, or a tokenizer that cannot be loaded or
    has no usable chat template."""


class InvalidSetName(InvalidInput):
    """A reference set name outside the allowed length or characters."""


class UnknownModel(RewardServeError):
    """A requested model is not served."""


class LimitExceeded(RewardServeError):
    """A request over one of the service's limits; ``limit`` names it (config ``limits.<limit>``)."""

    limit: str = ""

    def __init_subclass__(cls, limit: str = "", **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.limit = limit or cls.limit


class TooManyItems(LimitExceeded, limit="max_items_per_request"):
    """More items in one scoring request than allowed."""


class TextTooLong(LimitExceeded, limit="max_text_chars"):
    """An item whose prompt and response hold more characters than allowed."""


class TooManyModels(LimitExceeded, limit="max_models_per_request"):
    """More models requested at once than allowed."""


class TooManyReferences(LimitExceeded, limit="max_references_per_upload"):
    """More entries in one upload or import, or more fingerprints in one lookup, than allowed."""


class TooManySamples(LimitExceeded, limit="max_items_per_request"):
    """More base-policy samples in one upload than 16 × ``max_items_per_request``: the service
    scores them all in one go."""


class PayloadTooLarge(LimitExceeded, limit="max_body_bytes"):
    """A request body over the byte limit (checked by Content-Length, or while it streams in)."""


class MissingReference(RewardServeError):
    """No reference for an item and a model whose policy (or the request) says that is an error."""


class MissingLabel(RewardServeError):
    """An item without the ``label`` (ground truth) that a check needs, for a model with
    ``missing_label: error``; names the item and the model, never a label."""


class StaleReference(RewardServeError):
    """A stored reference made with another model revision, under ``revision_mismatch: reject``."""


class ReferenceNotFound(RewardServeError):
    """No stored reference for a model and prompt fingerprint in a set."""


class ReferenceSetNotFound(RewardServeError):
    """A reference set that holds no references."""


class StoreUnavailable(RewardServeError, RuntimeError):
    """The reference store cannot be reached right now (the request may be retried)."""


class StoreFull(StoreUnavailable):
    """The store refuses writes because it is full (Redis ``maxmemory`` with ``noeviction``)."""


class Overloaded(RewardServeError):
    """A backbone's queue is full (``max_queued_tokens``); ``retry_after``: seconds until it likely
    has room."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class ModelFailed(RewardServeError, RuntimeError):
    """A forward pass raised; names the backbone and its models."""

    def __init__(self, backbone: str, models: list[str], cause: BaseException):
        super().__init__(
            f"forward pass of backbone {backbone!r} (models {', '.join(models)}) failed: "
            f"{type(cause).__name__}: {cause}"
        )
        self.backbone, self.models = backbone, models


class NotReady(RewardServeError):
    """Models are still loading, the process drains, or forwards keep failing (try again later, or
    another replica)."""


class LoadFailed(NotReady):
    """A backbone failed to load: this process will not serve until an operator fixes it."""


class NotLive(RewardServeError):
    """Forwards have kept failing, or one has hung, past the liveness grace: restart the process."""


class Unauthorized(RewardServeError):
    """API keys are configured and the request has none, or an unknown one."""


class Forbidden(RewardServeError):
    """The request's API key may not do this: its scope, or the reference sets it may use."""


class ClientGone(RewardServeError):
    """The client closed the connection before the answer was ready (its queued items are dropped)."""
