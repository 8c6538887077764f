"""Quantization-aware training with learned step sizes: LSQ fake quantizers, ``QConv2d``/``QLinear``, and the
``qat`` student (a registered backbone whose convolutions and linears are swapped for quantized ones).

LSQ: Esser et al., "Learned Step Size Quantization", arXiv:1902.08153.
"""

from __future__ import annotations

import copy
import logging
import math
import types
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit._checks import is_int
from edgesplit.errors import ConfigError, ExportError
from edgesplit.registry import create, register

from ._bn_fold import ChannelBias, ConvBn, conv_bn_pairs, fold_batchnorm
from .qdq import fake_quant

__all__ = [
    "INIT_METHODS",
    "LsqQuantizer",
    "QConv2d",
    "QLinear",
    "export_module",
    "quantize_model",
    "quantized_layers",
    "qat_student",
]

log = logging.getLogger(__name__)

InitMethod = Literal["lsq", "max", "mse"]
INIT_METHODS: tuple[str, ...] = ("lsq", "max", "mse")
SUPPORTED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
_MSE_FRACTIONS = tuple(0.2 + 0.025 * i for i in range(33))  # of the largest magnitude, tried as clipping points


class _LsqFakeQuant(torch.autograd.Function):
    """``round(clamp(x / s, qn, qp)) * s`` with LSQ's gradients, fused to a few passes over ``x`` (the autograd
    composition of the same formula spends ~2.5x longer on activations, more than the convolutions themselves):

    d/dx = 1 where qn <= x/s <= qp, else 0 (straight-through round);
    d/ds = g * (round(x/s) - x/s) inside, g * qn or g * qp outside (Esser et al., eq. 3), ``s`` broadcastable to x.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, qn: int, qp: int, g: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, s)
        ctx.bounds, ctx.g = (qn, qp), g
        return torch.div(x, s).clamp_(qn, qp).round_().mul_(s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:  # type: ignore[override]
        x, s = ctx.saved_tensors
        qn, qp = ctx.bounds
        v = x / s
        q = v.clamp(qn, qp)
        inside = q == v
        ds = q.round_().sub_(v.mul_(inside))  # round(v) - v inside, qn or qp outside
        grad_s = (grad * ds).sum_to_size(s.shape).mul_(ctx.g)
        return grad * inside, grad_s, None, None, None


def _check_bits(bits: int, what: str) -> int:
    if not is_int(bits) or bits not in SUPPORTED_BITS:
        raise ConfigError(f"{what} must be an integer bit width in {SUPPORTED_BITS}, got {bits!r}")
    return bits


class LsqQuantizer(nn.Module):
    """Fake-quantize to ``bits`` with a learned step size: ``round(clamp(x / s, Qn, Qp)) * s``.

    Weights: ``per_channel=True`` (one step per output channel, axis 0), always signed and symmetric
    (zero point 0, integers in [-2^(b-1), 2^(b-1)-1]). Activations: one step per tensor; ``signed=None`` decides
    from the first batch whether the input can be negative (after a ReLU it cannot: integers in [0, 2^b-1]).

    The step is initialised from the first tensor seen (``init``):
      ``lsq``  2 mean|x| / sqrt(Qp) (the paper's rule),
      ``max``  max|x| / Qp (no clipping; the default),
      ``mse``  the clipping point, among fractions of max|x|, with the least quantization MSE.
    ``max`` is the default because it starts closest to the float model: quantizing a trained ResNet-18 (32
    Imagenette images, 16 to initialise) gave logits off by 1.0% (``max``), 1.4% (``mse``), 3.7% (``lsq``) at
    8 bits and 13%, 18%, 18% at 4 bits. The paper's rule makes 8-bit steps ~5x too coarse, and clipping to the
    per-layer MSE optimum cuts the rare large activations that the next layers rely on; QAT then learns the steps.
    Gradient of the step is scaled by 1/sqrt(n * Qp), n the number of elements that share the step.
    """

    def __init__(self, bits: int, *, per_channel: bool = False, channels: int = 1, signed: bool | None = None,
                 init: InitMethod = "max") -> None:
        super().__init__()
        self.bits = _check_bits(bits, "bits")
        if init not in INIT_METHODS:
            raise ConfigError(f"quantizer init must be one of {', '.join(INIT_METHODS)}, got {init!r}")
        self.per_channel = per_channel
        self.init = init
        self.auto_sign = signed is None
        self.scale = nn.Parameter(torch.ones(channels if per_channel else 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(True if signed is None else bool(signed)))

    def bounds(self) -> tuple[int, int]:
        """(Qn, Qp): the integer range."""
        if bool(self.signed):
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view(-1, *([1] * (x.dim() - 1))) if self.per_channel else t.view(())

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the sign mode (activations) and the step from ``x``."""
        x = x.detach().float()
        if self.auto_sign:
            self.signed.fill_(bool(x.min() < 0))
        qn, qp = self.bounds()
        flat = x.reshape(x.shape[0], -1) if self.per_channel else x.reshape(1, -1)
        mag = flat.abs()
        if self.init == "lsq":
            s = 2 * mag.mean(1) / math.sqrt(qp)
        else:
            top = mag.amax(1) if bool(self.signed) else flat.clamp_min(0).amax(1)
            s = top / qp
            if self.init == "mse":
                s = self._mse_search(flat, top, qn, qp)
        self.scale.copy_(s.clamp_min(1e-8).reshape(self.scale.shape))
        self.initialized.fill_(True)

    @staticmethod
    def _mse_search(flat: torch.Tensor, top: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
        if flat.shape[1] > 1 << 18:  # activations: a strided sample is enough to place the clipping point
            flat = flat[:, :: flat.shape[1] // (1 << 18) + 1]
        best_err = torch.full_like(top, float("inf"))
        best = top / qp
        for frac in _MSE_FRACTIONS:
            s = (top * frac / qp).clamp_min(1e-12)
            err = ((torch.clamp(torch.round(flat / s[:, None]), qn, qp) * s[:, None] - flat) ** 2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, s, best)
        return best

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        qn, qp = self.bounds()
        n = x[0].numel() if self.per_channel else x.numel()
        s = self._view(self.scale.clamp_min(1e-8), x)
        return _LsqFakeQuant.apply(x, s, qn, qp, 1.0 / math.sqrt(n * qp))

    @torch.no_grad()
    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes of ``x`` (what a deployed INT kernel sees)."""
        qn, qp = self.bounds()
        return torch.clamp(torch.round(x / self._view(self.scale.clamp_min(1e-8), x)), qn, qp).to(torch.int32)

    def extra_repr(self) -> str:
        sign = "auto" if self.auto_sign and not bool(self.initialized) else ("signed" if bool(self.signed) else "unsigned")
        return f"bits={self.bits}, {'per-channel' if self.per_channel else 'per-tensor'}, {sign}, init={self.init}"


class QConv2d(nn.Conv2d):
    """A ``Conv2d`` whose input and weight are fake-quantized (LSQ); parameter names match ``nn.Conv2d``, so a
    float checkpoint loads into it (the quantizers then initialise from the first batch)."""

    def __init__(self, *args: Any, weight_bits: int = 8, act_bits: int = 8, act_signed: bool | None = None,
                 weight_init: InitMethod = "max", act_init: InitMethod = "max", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight_quant = LsqQuantizer(weight_bits, per_channel=True, channels=self.out_channels, signed=True,
                                         init=weight_init)
        self.act_quant = LsqQuantizer(act_bits, signed=act_signed, init=act_init)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **quant: Any) -> "QConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, **quant)
        q.weight = conv.weight
        q.bias = conv.bias
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)


class QLinear(nn.Linear):
    """A ``Linear`` whose input and weight are fake-quantized (LSQ)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: int = 8,
                 act_bits: int = 8, act_signed: bool | None = None, weight_init: InitMethod = "max",
                 act_init: InitMethod = "max") -> None:
        super().__init__(in_features, out_features, bias)
        self.weight_quant = LsqQuantizer(weight_bits, per_channel=True, channels=out_features, signed=True,
                                         init=weight_init)
        self.act_quant = LsqQuantizer(act_bits, signed=act_signed, init=act_init)

    @classmethod
    def from_float(cls, linear: nn.Linear, **quant: Any) -> "QLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, **quant)
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)


def _swappable(module: nn.Module) -> bool:
    # exact types only: subclasses (binary layers, already-quantized layers) keep their own semantics
    return type(module) in (nn.Conv2d, nn.Linear)


def quantize_model(model: nn.Module, weight_bits: int, act_bits: int, keep_first_last: bool = True,
                   first_last_bits: int = 8, weight_init: InitMethod = "max",
                   act_init: InitMethod = "max") -> nn.Module:
    """Swap every ``nn.Conv2d``/``nn.Linear`` of ``model`` (in place) for ``QConv2d``/``QLinear``.

    With ``keep_first_last`` the first convolution (it sees the image) and the last linear (the classifier)
    are quantized at ``first_last_bits`` instead. Returns ``model``.
    """
    _check_bits(weight_bits, "weight_bits")
    _check_bits(act_bits, "act_bits")
    _check_bits(first_last_bits, "first_last_bits")
    names = [n for n, m in model.named_modules() if _swappable(m)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    convs = [n for n in names if type(model.get_submodule(n)) is nn.Conv2d]
    linears = [n for n in names if type(model.get_submodule(n)) is nn.Linear]
    keep = {convs[0] if convs else None, linears[-1] if linears else None} if keep_first_last else set()
    for name in names:
        old = model.get_submodule(name)
        wb, ab = (first_last_bits, first_last_bits) if name in keep else (weight_bits, act_bits)
        quant = dict(weight_bits=wb, act_bits=ab, weight_init=weight_init, act_init=act_init)
        new = (QConv2d if isinstance(old, nn.Conv2d) else QLinear).from_float(old, **quant)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The ``QConv2d``/``QLinear`` layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}


class _ExportQuant(nn.Module):
    """An ``LsqQuantizer`` at export: ``qdq.fake_quant`` (exported as ONNX QuantizeLinear/DequantizeLinear) with
    the learned step as scale and zero point 0 (``of``), or a weight's step after BatchNorm folding.

    8-bit: int8 (-128, 127), or uint8 (0, 255) for an unsigned activation quantizer: one Q/DQ pair, exact.
    Fewer bits: the b-bit grid is a subset of the int8 grid at the same scale (|Qn|, Qp <= 2^(b-1) resp. 2^b - 1
    <= 127), so ``x`` is first clamped in float to [Qn s, Qp s] and then passed through an int8 Q/DQ at scale
    ``s``: round(clamp(x, Qn s, Qp s) / s) * s == round(clamp(x / s, Qn, Qp)) * s (the bounds are integers), i.e.
    the model's own b-bit fake quantization; backends see int8 Q/DQ (signed, so TensorRT takes it too), though
    the values only use 2^b of its levels. Weights are clamped once, when the export module is built.
    """

    def __init__(self, scale: torch.Tensor, *, axis: int, qmin: int = -128, qmax: int = 127,
                 clamp: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().to(torch.float32).clone())
        self.axis = axis
        self.qmin, self.qmax = qmin, qmax
        # the float clamp that restricts the int8 grid to the b-bit one (activations below 8 bits)
        self.lo, self.hi = clamp if clamp is not None else (None, None)

    @classmethod
    def of(cls, quant: LsqQuantizer, *, axis: int, clamp: bool) -> "_ExportQuant":
        """``quant`` at its learned step; ``clamp``: restrict the int8 grid to ``quant``'s b-bit one."""
        qn, qp = quant.bounds()
        scale = quant.scale.detach().clamp_min(1e-8)
        qmin, qmax = (0, 255) if (quant.bits == 8 and qn == 0) else (-128, 127)
        bounds = (float(qn) * float(scale), float(qp) * float(scale)) if clamp else None
        return cls(scale, axis=axis, qmin=qmin, qmax=qmax, clamp=bounds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo is not None:
            x = x.clamp(self.lo, self.hi)
        return fake_quant(x, self.scale, axis=self.axis, qmin=self.qmin, qmax=self.qmax)


def _integer_kernel(model: nn.Module, pair: ConvBn) -> bool:
    """Whether runtimes can run the folded convolution of ``pair`` as an integer kernel, Conv -> [activation] -> Q:
    its output goes to one 8-bit activation quantizer, directly or through an activation whose clamp that
    quantizer's own range makes redundant (ReLU before an unsigned one; ReLU6 when Qp s <= 6), which runtimes drop.
    A sub-8-bit quantizer clamps in float before its Q (``_ExportQuant``), which no runtime fuses."""
    if pair.next_layer is None:
        return False
    quant = model.get_submodule(pair.next_layer).act_quant
    if quant.bits != 8:
        return False
    if pair.clamp is None:
        return True
    qn, qp = quant.bounds()
    s = float(quant.scale.detach().clamp_min(1e-8))
    slack = 1e-6 * max(abs(qn), qp) * s  # float32 rounding: ReLU6 before a step of 6 / 255 (runtimes allow it too)
    return pair.clamp[0] <= qn * s + slack and qp * s - slack <= pair.clamp[1]


def export_module(model: nn.Module) -> nn.Module:
    """An exportable copy of a QAT model (normalized float NCHW -> logits, like its eval forward) whose quantized
    layers express their weight (per output channel, axis 0) and activation (per tensor) quantizers with
    ``edgesplit.plugins.quant.qdq.fake_quant``, so the exporter keeps those scales as Q/DQ pairs instead of
    calibrating its own. Sub-8-bit layers emulate their grid exactly with int8 Q/DQ (``_ExportQuant``). The model
    is not modified.

    A ``BatchNorm2d`` that reads a ``QConv2d``'s output (and nothing else does) is folded into it in the quantized
    domain (``_bn_fold.fold_batchnorm``): the weight integers stay (negated in channels whose BatchNorm factor is
    negative) and the per-channel step becomes s |gamma / sqrt(var + eps)|. Where the model quantizes the
    convolution's output next at 8 bits, the BatchNorm's shift becomes the convolution's bias, so the graph reads
    DQ(int8 W) -> Conv(bias) -> [Relu] -> Q, the pattern onnxruntime fuses into QLinearConv and TensorRT into an
    int8 convolution; elsewhere (before a residual addition, or a 4-bit quantizer's float clamp) it is added after
    the convolution (``_bn_fold.ChannelBias``: as a bias, onnxruntime would round it to int32 for nothing). The same
    function as the model's eval forward up to float rounding (an activation within float error of a rounding tie
    may land one step away, and that step propagates). A BatchNorm that cannot be folded exactly stays: one after
    an 8-bit convolution whose negative-factor channels reach the integer -128 (+128 is not int8). The copy's
    ``batchnorm_folding`` (``{"folded": {bn: conv}, "kept": {bn: why}}``) says which were folded and which kept.

    Raises ``ExportError`` if a quantizer has not been initialised (the model never saw a batch, so its steps
    are still placeholders).
    """
    layers = quantized_layers(model)
    if not layers:
        raise ExportError(f"{type(model).__name__} has no QConv2d/QLinear layer: nothing to export as Q/DQ")
    fresh = [f"{name}.{q}" for name, layer in layers.items() for q in ("weight_quant", "act_quant")
             if not bool(getattr(layer, q).initialized)]
    if fresh:
        raise ExportError(f"QAT model: quantizer steps are not initialised ({', '.join(fresh[:3])}"
                          f"{', ...' if len(fresh) > 3 else ''}); run a forward pass on data (or train) before "
                          "exporting, so the learned scales exist")
    out = copy.deepcopy(model).eval()
    out.__dict__.pop("export_module", None)  # the copy is the export module: no further indirection
    pairs = conv_bn_pairs(out, (QConv2d, QLinear))
    folding: dict[str, dict[str, str]] = {"folded": {}, "kept": {}}
    with torch.no_grad():
        for name in layers:
            layer = out.get_submodule(name)
            wq, aq = layer.weight_quant, layer.act_quant
            s = wq.scale.detach().clamp_min(1e-8)
            folded = None
            pair = pairs.get(name)
            if pair is not None:
                bn = out.get_submodule(pair.bn)
                folded = fold_batchnorm(wq.integers(layer.weight), s, bn, layer.bias)
                if folded is None:
                    folding["kept"][pair.bn] = (
                        "no running statistics" if bn.running_var is None else
                        "a channel with a negative BatchNorm factor has the weight integer -128; +128 is not int8")
            if pair is not None and folded is not None:
                step = folded.scale.view(-1, *([1] * (layer.weight.dim() - 1)))
                layer.weight = nn.Parameter(folded.integers.to(torch.float32) * step, requires_grad=False)
                # the shift: the convolution's bias where an integer kernel takes it (Conv -> [Relu] -> Q), else
                # an Add after it (``ChannelBias``), which no runtime rounds to int32
                inside = _integer_kernel(model, pair)
                layer.bias = nn.Parameter(folded.bias, requires_grad=False) if inside else None
                parent, _, child = pair.bn.rpartition(".")
                setattr(out.get_submodule(parent) if parent else out, child,
                        nn.Identity() if inside else ChannelBias(folded.bias))
                layer.weight_quant = _ExportQuant(folded.scale, axis=0)
                folding["folded"][pair.bn] = name
            else:
                qn, qp = wq.bounds()
                s = s.view(-1, *([1] * (layer.weight.dim() - 1)))
                # clamp the weight to its b-bit range once (a no-op on what int8 Q/DQ computes at 8 bits)
                layer.weight = nn.Parameter(torch.clamp(layer.weight.detach(), qn * s, qp * s), requires_grad=False)
                layer.weight_quant = _ExportQuant.of(wq, axis=0, clamp=False)
            layer.act_quant = _ExportQuant.of(aq, axis=1, clamp=aq.bits < 8)
    for bn_name, why in folding["kept"].items():
        log.debug("%s: BatchNorm %s kept, not folded into its convolution (%s)", type(model).__name__, bn_name, why)
    out.batchnorm_folding = folding  # type: ignore[assignment]
    return out.requires_grad_(False)


@register("student", "qat")
def qat_student(backbone: str, backbone_params: dict[str, Any] | None = None, weight_bits: int = 8,
                act_bits: int = 8, num_classes: int = 1000, keep_first_last: bool = True, first_last_bits: int = 8,
                weight_init: InitMethod = "max", act_init: InitMethod = "max") -> nn.Module:
    """A registered backbone trained with fake quantization: the same module tree (and state-dict keys) as the
    float backbone plus quantizer steps, so ``init:`` from a float student of that backbone loads directly."""
    params = dict(backbone_params or {})
    if "num_classes" in params:
        raise ConfigError("qat student: give num_classes once, at the student level, not in backbone_params")
    model = create("backbone", backbone, num_classes=num_classes, **params)
    quantize_model(model, weight_bits, act_bits, keep_first_last=keep_first_last, first_last_bits=first_last_bits,
                   weight_init=weight_init, act_init=act_init)
    model.quant_config = {"weight_bits": weight_bits, "act_bits": act_bits,  # type: ignore[assignment]
                          "keep_first_last": keep_first_last, "first_last_bits": first_last_bits}
    # the exporter traces this instead of the model, so the bundle keeps the learned scales (edgesplit.export)
    model.export_module = types.MethodType(export_module, model)  # type: ignore[assignment]
    return model
