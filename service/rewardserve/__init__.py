"""rewardserve: reward-model serving for RLHF (raw, LSC-transformed and AND-aggregated rewards)."""

__version__ = "0.1.0"
