"""The backbone kinds: a config's ``kind`` → the module that builds it (``registry/``).

A kind is one module with ``build(name, cfg, ctx) -> Backbone`` (``registry.backbone``). Adding a
kind (a verifier whose checks run in a process pool, a generative judge) is that module and its
line here; the scoring pipeline does not change. This module imports nothing, so that the config
can validate ``kind`` against it.
"""

from __future__ import annotations

KINDS: dict[str, str] = {
    "encoder_head": "rewardserve.registry.model",  # a sentence encoder + small reward heads
    "sequence_classifier": "rewardserve.registry.model",  # a Hugging Face sequence-classification reward model
    "judge": "rewardserve.registry.judge",  # a causal LM asked yes/no questions: raw = log P(Yes) − log P(No)
    "verifier": "rewardserve.registry.verifier",  # rule-based checks in a process pool: raw = score in [0, 1]
}
