"""Checkpoints as safetensors with the model's recipe in the metadata, so ``load(path)`` rebuilds any of them
(reading them is the core's ``edgesplit.checkpoint``; writing them is here).

Resumable training state (optimizer, epoch, RNG) goes to a second safetensors file; nothing is ever pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from edgesplit.checkpoint import FORMAT, META_KEY, CheckpointError, build_model, read_metadata
from edgesplit.checkpoint import load as _load
from edgesplit.errors import ConfigError

__all__ = ["META_KEY", "FORMAT", "CheckpointError", "save_checkpoint", "read_metadata", "build_model", "load",
           "save_state", "load_state", "atomic_write", "set_label_names"]


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and rename the result over ``path``, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _state_for_checkpoint(model: nn.Module) -> dict[str, torch.Tensor]:
    fn = getattr(model, "checkpoint_state_dict", None)
    return fn() if fn is not None else model.state_dict()


def save_checkpoint(model: nn.Module, path: str | Path, *, model_config: dict[str, Any], labels: list[str],
                    preprocess: dict[str, Any], extra: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None, label_names: list[str] | None = None) -> None:
    """Write the model's weights (optionally cast, e.g. fp16 for committed weights) and recipe atomically;
    ``label_names``: display names parallel to ``labels`` (stored as ``label_names``)."""
    if label_names is not None:
        if len(label_names) != len(labels):
            raise ConfigError(f"{path}: {len(label_names)} label names for {len(labels)} labels")
        extra = {**(extra or {}), "label_names": [str(n) for n in label_names]}
    tensors = {}
    for k, v in _state_for_checkpoint(model).items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = {"format": FORMAT, "model": model_config, "labels": list(labels), "preprocess": preprocess,
            **(extra or {})}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)}))


def set_label_names(path: str | Path, names: dict[str, str]) -> list[str]:
    """Store display names (class id -> name; ids without one keep the id) in a checkpoint's metadata, next to its
    labels; the tensors are rewritten unchanged. Returns the names, parallel to the labels."""
    from edgesplit.labels import check_names

    info = read_metadata(path)
    labels = [str(v) for v in info["labels"]]
    info["label_names"] = check_names(labels, names, str(path))
    tensors = load_file(str(path))
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(info)}))
    return info["label_names"]


def load(path: str | Path, *, eval_mode: bool = True) -> nn.Module:
    """Rebuild a checkpoint's model through the registry and load its weights (``edgesplit.checkpoint.load``).

    The recipe is attached as ``model.edgesplit_info`` (labels, preprocessing, training metrics).
    """
    import edgesplit.train.losses  # noqa: F401  (registers losses some models reference)

    return _load(path, eval_mode=eval_mode)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        plain["state"][str(idx)] = {}
        for k, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
                plain["state"][str(idx)][k] = None
            else:
                plain["state"][str(idx)][k] = v
    return tensors, plain


def save_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, extra_modules: nn.Module,
               epoch: int, info: dict[str, Any]) -> None:
    """Everything needed to resume after ``epoch``: model + loss parameters, optimizer, counters."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"loss.{k}": v.detach().cpu().contiguous() for k, v in extra_modules.state_dict().items()})
    opt_tensors, opt_plain = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    meta = {"epoch": epoch, "optimizer": opt_plain, **info}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)}))


def load_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
               extra_modules: nn.Module) -> dict[str, Any]:
    """Restore what ``save_state`` wrote; returns its metadata (``epoch`` is the last finished epoch)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[META_KEY])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    extra_modules.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("loss.")})
    opt = meta["optimizer"]
    state = {}
    for idx, entry in opt["state"].items():
        state[int(idx)] = {k: (tensors[f"opt.{idx}.{k}"] if v is None else v) for k, v in entry.items()}
    optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
    return meta
