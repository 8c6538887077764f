"""Where a teacher can be split: per cut point, the device-side multiply-accumulates (the stages up to the cut) and
the size of the feature map that would cross the network there (``edgesplit info TEACHER``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgesplit.interfaces import Teacher

from .checkpoint import load

__all__ = ["cut_table"]


def _macs(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Multiply-accumulates of convolutions and linear layers in one forward of ``module`` (batch of one)."""
    total = 0

    def conv(mod: nn.Conv2d, _: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += int(out[0].numel()) * mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)

    def linear(mod: nn.Linear, _: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += int(out[0].numel()) * mod.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        y = module(x)
    finally:
        for h in hooks:
            h.remove()
    return total, y


@torch.no_grad()
def cut_table(path: str | Path) -> list[dict[str, Any]] | None:
    """One row per stage a split can follow (``cut``, ``device_macs``, ``device_fraction``, ``latent_shape``,
    ``latent_values``) at the checkpoint's input size; None for a model without named stages (a student)."""
    model = load(path)
    if not isinstance(model, Teacher):
        return None
    names, stage = model.stage_names, model.stage
    size = int(model.edgesplit_info["preprocess"]["size"])  # type: ignore[attr-defined]
    x = torch.zeros(1, 3, size, size)
    rows, done = [], 0
    for name in names:
        macs, x = _macs(stage(name), x)
        done += macs
        if x.ndim == 4:
            rows.append({"cut": name, "device_macs": done, "latent_shape": [int(v) for v in x.shape[1:]],
                         "latent_values": int(x[0].numel())})
    for row in rows:
        row["device_fraction"] = row["device_macs"] / done if done else 0.0
    return rows
