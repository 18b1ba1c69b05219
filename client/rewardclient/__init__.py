"""rewardclient: the Python SDK of rewardserve (httpx only), its TRL and verl adapters, and the wire
vocabulary that the server shares (``rewardclient.protocol``)."""

from .client import (
    AsyncRewardClient,
    AuthenticationError,
    BadRequestError,
    ConnectionFailed,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RetryPolicy,
    RewardClient,
    RewardServeError,
    ScoreResult,
    ServerError,
    ServiceUnavailableError,
)
from .protocol import canonical_prompt, prompt_fingerprint

__all__ = [
    "AsyncRewardClient",
    "AuthenticationError",
    "BadRequestError",
    "ConnectionFailed",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RetryPolicy",
    "RewardClient",
    "RewardServeError",
    "ScoreResult",
    "ServerError",
    "ServiceUnavailableError",
    "canonical_prompt",
    "prompt_fingerprint",
]
