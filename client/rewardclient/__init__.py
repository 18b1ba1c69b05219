"""rewardclient: the Python SDK of rewardserve."""

from .fingerprint import prompt_fingerprint

__all__ = ["prompt_fingerprint"]
