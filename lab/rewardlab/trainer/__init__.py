"""The RLHF trainer client (TRL GRPOTrainer against a running rewardserve)."""

from .grpo import RLHFConfig, run_rlhf

__all__ = ["RLHFConfig", "run_rlhf"]
