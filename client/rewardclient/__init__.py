"""rewardclient: the Python SDK of rewardserve."""

from .client import (
    AsyncRewardClient, AuthenticationError, BadRequestError, ConnectionFailed, NotFoundError, OverloadedError,
    PayloadTooLargeError, RewardClient, RewardServeError, ScoreResult, ServerError,
)
from .fingerprint import canonical_prompt, prompt_fingerprint

__all__ = [
    "AsyncRewardClient", "AuthenticationError", "BadRequestError", "ConnectionFailed", "NotFoundError", "OverloadedError",
    "PayloadTooLargeError", "RewardClient", "RewardServeError", "ScoreResult", "ServerError", "canonical_prompt",
    "prompt_fingerprint",
]
