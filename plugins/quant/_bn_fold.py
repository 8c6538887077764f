"""BatchNorm folded into the quantized convolution before it, exactly in the quantized domain: a QAT student's
export keeps each convolution's integer weights and moves the BatchNorm's per-channel factor into the weight scale
and its shift into the bias, so the graph reads DQ(int8 W) -> Conv(+bias) -> [Relu] -> Q, which onnxruntime fuses
into QLinearConv and TensorRT into an int8 convolution (``qat.export_module``; where no integer kernel can follow,
the shift is a ``ChannelBias`` after the convolution instead)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WEIGHT_RANGE", "ConvBn", "FoldedConv", "ChannelBias", "conv_bn_pairs", "fold_batchnorm"]

log = logging.getLogger(__name__)

# the integer range of a weight Q/DQ in the exported graph (int8, zero point 0; TensorRT takes nothing else)
WEIGHT_RANGE = (-128, 127)


@dataclass
class FoldedConv:
    """A convolution with its BatchNorm folded in: weight = ``integers * scale`` (per output channel), plus bias."""

    integers: torch.Tensor  # int32, the layer's weight codes, negated in channels whose BatchNorm factor is < 0
    scale: torch.Tensor  # float32, one positive step per output channel: s * |gamma / sqrt(var + eps)|
    bias: torch.Tensor  # float32, beta - mean * gamma / sqrt(var + eps) (+ the folded conv bias)


@dataclass(frozen=True)
class ConvBn:
    """A convolution and the BatchNorm that reads its output (module names), and where the BatchNorm's output
    goes: ``next_layer``, the one layer among ``leaves`` (which quantize their input) that reads it, directly or
    through one activation that clamps to ``clamp`` (ReLU: (0, inf), ReLU6: (0, 6)); None when it goes anywhere
    else (too). ``Identity`` modules on the way are skipped."""

    conv: str
    bn: str
    clamp: tuple[float, float] | None = None
    next_layer: str | None = None


def conv_bn_pairs(model: nn.Module, leaves: tuple[type[nn.Module], ...]) -> dict[str, ConvBn]:
    """``{conv name: ConvBn}`` for every ``BatchNorm2d`` of ``model`` whose input is the output of a ``Conv2d``
    among ``leaves`` (layers that quantize their input, e.g. ``QConv2d``/``QLinear``) and nothing else reads that
    output, both modules called once per forward.

    Found by tracing ``model.forward`` with ``torch.fx`` (``leaves`` are not traced into), so only what the forward
    really computes counts, not the order in which modules were registered. A model that cannot be traced has no
    pairs (its BatchNorms are then exported as they are)."""
    from torch import fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types for untraceable Python; fold nothing then
        log.warning("%s: not traceable with torch.fx (%s: %s); BatchNorm is exported unfolded",
                    type(model).__name__, type(exc).__name__, exc)
        return {}
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def module(node: fx.Node) -> nn.Module | None:
        return modules[node.target] if node.op == "call_module" else None

    def clamp_of(node: fx.Node) -> tuple[float, float] | None:
        """The range an activation node clamps to, None for anything else."""
        m = module(node)
        if isinstance(m, nn.ReLU) or (node.op == "call_function" and node.target in (torch.relu, F.relu)) or (
                node.op == "call_method" and node.target in ("relu", "relu_")):
            return 0.0, math.inf
        if isinstance(m, nn.Hardtanh):  # ReLU6 too
            return float(m.min_val), float(m.max_val)
        if node.op == "call_function" and node.target is F.relu6:
            return 0.0, 6.0
        return None

    def only_reader(node: fx.Node) -> fx.Node | None:
        """The single node that reads ``node``'s output, past Identity modules; None if not exactly one."""
        while len(node.users) == 1:
            node = next(iter(node.users))
            if not isinstance(module(node), nn.Identity):
                return node
        return None

    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d) or len(node.args) != 1:
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and isinstance(module(src), leaves) and isinstance(module(src), nn.Conv2d)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1):
            nxt = only_reader(node)
            clamp = clamp_of(nxt) if nxt is not None else None
            if clamp is not None:
                nxt = only_reader(nxt)  # type: ignore[arg-type]
            following = str(nxt.target) if nxt is not None and isinstance(module(nxt), leaves) else None
            pairs[str(src.target)] = ConvBn(str(src.target), str(node.target), clamp, following)
    return pairs


@torch.no_grad()
def fold_batchnorm(integers: torch.Tensor, scale: torch.Tensor, bn: nn.BatchNorm2d,
                   conv_bias: torch.Tensor | None = None) -> FoldedConv | None:
    """Fold ``bn`` (eval mode: running statistics) into a convolution whose weight is ``integers * scale`` (one
    step per output channel, axis 0). BatchNorm(conv(x, q s) + c) = conv(x, q s f) + (c - mean) f + beta with
    f = gamma / sqrt(var + eps), per channel; the integers stay and the step becomes s |f|, and where f < 0 the
    channel's integers are negated instead of the step (every backend wants positive scales). Exact up to float
    rounding of the new steps and bias (float32, computed in float64).

    A channel with f == 0 (or s |f| below float32's range) outputs its bias alone: integers 0, step s.

    Returns None when the fold cannot be exact in int8: the weight grid is [-2^(b-1), 2^(b-1) - 1], so at 8 bits
    a channel with f < 0 whose integers reach -128 would need +128. Also None for a BatchNorm without running
    statistics (it normalizes with batch statistics even in eval mode)."""
    if bn.running_mean is None or bn.running_var is None:
        return None
    n = integers.shape[0]
    mean = bn.running_mean.detach().double()
    std = torch.sqrt(bn.running_var.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(n, dtype=torch.float64)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(n, dtype=torch.float64)
    factor = gamma / std
    negative = factor < 0
    flip = negative.view(-1, *([1] * (integers.dim() - 1)))
    q = torch.where(flip, -integers, integers).to(torch.int32)
    if bool(((q < WEIGHT_RANGE[0]) | (q > WEIGHT_RANGE[1])).any()):
        return None
    step = (scale.detach().double() * factor.abs()).to(torch.float32)
    dead = step == 0  # f == 0, or an underflow: the channel is its bias
    q[dead] = 0
    step = torch.where(dead, scale.detach().to(torch.float32), step)
    shift = beta - mean * factor
    if conv_bias is not None:
        shift = shift + conv_bias.detach().double() * factor
    return FoldedConv(q, step, shift.to(torch.float32))


class ChannelBias(nn.Module):
    """``x + bias`` per channel (NCHW): a folded BatchNorm's shift where no integer kernel takes it as its bias.

    Why not the convolution's bias there: onnxruntime rounds the bias of every convolution that reads Q/DQ inputs
    to int32 at scale s_x * s_w (what an integer kernel needs), also where it then runs the convolution in float
    (its output is not quantized); a separate Add keeps that shift as the model computes it."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", bias.detach().to(torch.float32).reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias
