"""Training and distillation engine (needs torch: ``pip install edgesplit[train]``)."""

from __future__ import annotations

from .checkpoint import load, read_metadata, save_checkpoint
from .engine import Trainer, evaluate_cache, model_outputs, to_input, train

__all__ = ["load", "read_metadata", "save_checkpoint", "Trainer", "train", "evaluate_cache", "model_outputs",
           "to_input"]
