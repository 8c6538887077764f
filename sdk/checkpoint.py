"""Reading edgesplit checkpoints: safetensors files whose metadata holds the model's recipe, rebuilt through the
registry. Torch-free to import; :func:`load` needs torch (``edgesplit[train]``) only when called.

This is the one loader that the training engine, the exporter and the plugins share (an Entropic Student loads its
teacher with it); writing checkpoints is the training engine's (``edgesplit.train.checkpoint``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .registry import create

__all__ = ["META_KEY", "FORMAT", "FILE_PARAMS", "CheckpointError", "read_metadata", "build_model", "load"]

META_KEY = "edgesplit"  # the safetensors metadata key holding the JSON recipe
FORMAT = 1
FILE_PARAMS = ("teacher",)  # model parameters that name a file, resolved next to the checkpoint first


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The recipe stored in a checkpoint (no tensors are read)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"{p}: not a safetensors checkpoint ({exc})") from exc
    if META_KEY not in meta:
        raise CheckpointError(f"{p}: safetensors file without edgesplit metadata (not written by edgesplit)")
    try:
        info = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: corrupt edgesplit metadata ({exc})") from exc
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{p}: checkpoint format {info.get('format')!r}, this edgesplit reads {FORMAT}")
    return info


def build_model(model_config: dict[str, Any], source: str = "<checkpoint>") -> Any:
    """The untrained model a recipe ``{kind, name, params}`` names, built by the registry."""
    try:
        kind, name, params = model_config["kind"], model_config["name"], model_config.get("params", {})
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{source}: model recipe needs kind, name and params, got {model_config!r}") from exc
    return create(kind, name, **params)


def _resolve_relative_files(recipe: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """Relative file parameters (a student's teacher) are looked up next to the checkpoint first, then from the
    working directory, so published weights load from anywhere."""
    params = dict(recipe.get("params", {}))
    for key in FILE_PARAMS:
        value = params.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            beside = checkpoint.parent / value
            if beside.is_file():
                params[key] = str(beside)
    return {**recipe, "params": params}


def load(path: str | Path, *, eval_mode: bool = True) -> Any:
    """Rebuild a checkpoint's model through the registry and load its weights (float32); needs torch.

    The recipe is attached as ``model.edgesplit_info`` (labels, preprocessing, training metrics). A model with
    ``load_checkpoint_state_dict`` loads its own subset of weights (e.g. a split student without its teacher's
    tail); any other loads strictly.
    """
    info = read_metadata(path)
    recipe = _resolve_relative_files(info["model"], Path(path))
    model = build_model(recipe, str(path))
    from safetensors.torch import load_file  # torch: only once a (torch) model has been built

    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    loader = getattr(model, "load_checkpoint_state_dict", None)
    try:
        if loader is not None:
            loader(state)
        else:
            model.load_state_dict(state, strict=True)
    except (RuntimeError, CheckpointError) as exc:  # torch's load_state_dict raises RuntimeError
        raise CheckpointError(f"{path}: weights do not fit model {info['model']['name']!r}: {exc}") from exc
    model.edgesplit_info = info
    return model.eval() if eval_mode else model
