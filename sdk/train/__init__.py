"""Training and distillation engine (needs torch: ``pip install edgesplit[train]``)."""

from __future__ import annotations

from edgesplit.registry import requires

requires("torch", extra="train")  # without torch: listed as unavailable, with this hint

from .checkpoint import load, read_metadata, save_checkpoint  # noqa: E402
from .engine import Trainer, evaluate_cache, model_outputs, to_input, train  # noqa: E402

__all__ = ["load", "read_metadata", "save_checkpoint", "Trainer", "train", "evaluate_cache", "model_outputs",
           "to_input"]
