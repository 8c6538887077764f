"""What a student costs: bytes of its weights as trained (float32) and as deployed (1-bit / b-bit packed), bytes of
its checkpoint on disk, and its multiply-accumulates split into real-valued and binary ones."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .binary import BinaryConv2d, binary_layers
from .qat import quantized_layers

__all__ = ["storage_report", "checkpoint_bytes", "mac_report"]

_SHAPE_BYTES = 4 * 8  # the int64 shape tensor stored with each packed binary layer


def checkpoint_bytes(model: nn.Module) -> int:
    """Size in bytes of the safetensors file that ``save_checkpoint`` writes for ``model`` (without metadata):
    ``checkpoint_state_dict()`` when the model has one (packed binary layers), else ``state_dict()``."""
    from safetensors.torch import save

    fn = getattr(model, "checkpoint_state_dict", None)
    state = fn() if fn is not None else model.state_dict()
    return len(save({k: v.detach().cpu().contiguous() for k, v in state.items()}))


def storage_report(model: nn.Module) -> dict[str, Any]:
    """Weight storage of ``model`` in bytes.

    ``binary_weight_*``: the binary layers' weights as float32 latent weights vs packed (1 bit per weight, a
    float32 scale per output channel, the shape); ``quantized_weight_*``: QAT layers' weights as float32 vs
    b-bit integers plus a float32 scale per output channel; ``model_fp32_bytes`` / ``model_packed_bytes``: every
    parameter and buffer, with those layers counted unpacked / packed; ``checkpoint_bytes``: the file on disk.
    """
    total_fp32 = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    bin_fp32 = bin_packed = 0
    for layer in binary_layers(model).values():
        n = layer.weight.numel()
        bin_fp32 += 4 * n + (4 * layer.out_channels if layer.scale is not None else 0)
        bin_packed += math.ceil(n / 8) + 4 * layer.out_channels + _SHAPE_BYTES
    q_fp32 = q_packed = 0
    for layer in quantized_layers(model).values():
        n = layer.weight.numel()
        q_fp32 += 4 * n
        q_packed += math.ceil(n * layer.weight_quant.bits / 8) + 4 * layer.weight_quant.scale.numel()
        q_fp32 += 4 * layer.weight_quant.scale.numel()  # the steps are stored either way
    report: dict[str, Any] = {
        "binary_layers": len(binary_layers(model)),
        "binary_weight_fp32_bytes": bin_fp32,
        "binary_weight_packed_bytes": bin_packed,
        "binary_weight_ratio": round(bin_fp32 / bin_packed, 2) if bin_packed else None,
        "quantized_layers": len(quantized_layers(model)),
        "quantized_weight_fp32_bytes": q_fp32,
        "quantized_weight_packed_bytes": q_packed,
        "quantized_weight_ratio": round(q_fp32 / q_packed, 2) if q_packed else None,
        "model_fp32_bytes": total_fp32,
        "model_packed_bytes": total_fp32 - bin_fp32 - q_fp32 + bin_packed + q_packed,
        "checkpoint_bytes": checkpoint_bytes(model),
    }
    return report


def mac_report(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of one forward pass per image: ``real_macs`` (float convolutions and linears) and
    ``binary_macs`` (``BinaryConv2d``: XNOR-popcount on a 1-bit kernel); ``params``."""
    totals = {"real_macs": 0, "binary_macs": 0}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        else:
            k = mod.in_features  # type: ignore[assignment]
        totals["binary_macs" if isinstance(mod, BinaryConv2d) else "real_macs"] += int(out[0].numel()) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x[:1])
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return {**totals, "params": sum(p.numel() for p in model.parameters())}
