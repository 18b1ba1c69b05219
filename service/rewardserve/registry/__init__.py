"""Backbones as objects (``backbone.py``: the protocol every kind implements; ``model.py``: networks
behind a batcher) and the ``BackboneRegistry`` that owns them (``registry.py``)."""

from .backbone import Backbone, BackboneContext, BackendFactory, RawScores, ScoreInput, ServedModel
from .registry import BackboneRegistry, RawRewards, build_backbone

__all__ = [
    "Backbone",
    "BackboneContext",
    "BackboneRegistry",
    "BackendFactory",
    "RawRewards",
    "RawScores",
    "ScoreInput",
    "ServedModel",
    "build_backbone",
]
