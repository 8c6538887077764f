"""Binarized layers and the ``binary`` student: sign estimators (clipped STE, ReSTE, BiPer, ApproxSign),
``BinaryConv2d`` (1-bit weights times a per-channel scale, 1-bit activations) and a Bi-Real ResNet.

One binarization rule everywhere (training, eval, packing, OpenVINO, ONNX): ``binarize(x) = +1 if x > 0 else -1``.
``x == 0`` gives -1, unlike ``torch.sign`` (0): OpenVINO's 1-bit kernels compare ``x > threshold``, and a bit
cannot hold 0. For the same reason binary convolutions pad with -1, not 0 (OpenVINO's BinaryConvolution
``pad_value=-1``), so the exported kernels compute exactly what was trained.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.errors import CheckpointError, ConfigError, PluginError
from edgesplit.registry import create, register
from edgesplit.plugins.backbones import Backbone
from edgesplit.plugins.backbones.resnet import build_resnet_body, resnet_channels

__all__ = [
    "SignEstimator",
    "ClippedSTE",
    "ApproxSign",
    "ReSTE",
    "BiPer",
    "register_estimator",
    "create_estimator",
    "binarize",
    "pack_signs",
    "unpack_signs",
    "BinaryConv2d",
    "RPReLU",
    "BiRealBlock",
    "BinaryResNet",
    "binary_student",
    "binary_layers",
]

ScaleMode = Literal["mean_abs", "learnable"]


def binarize(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x > 0``, -1 elsewhere (zero included), in ``x``'s dtype."""
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


def pack_signs(signs: torch.Tensor) -> torch.Tensor:
    """Sign bits (1 for +1) of a +-1 tensor, flattened and packed 8 per byte (``np.packbits``, big-endian)."""
    bits = (signs.detach().cpu() > 0).numpy().reshape(-1)
    return torch.from_numpy(np.packbits(bits))


def unpack_signs(packed: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """The +-1 float tensor of ``shape`` that ``pack_signs`` packed."""
    count = int(np.prod(shape))
    bits = np.unpackbits(packed.detach().cpu().numpy().astype(np.uint8), count=count)
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1).reshape(tuple(int(s) for s in shape))


# -- estimators --------------------------------------------------------------------------------------------


def register_estimator(name: str, *, override: bool = False) -> Callable[[type["SignEstimator"]], type["SignEstimator"]]:
    """Register a ``SignEstimator`` subclass as registry kind ``estimator`` (``estimator:`` in student configs)."""

    def decorator(cls: type[SignEstimator]) -> type[SignEstimator]:
        cls.name = name
        return register("estimator", name, override=override)(cls)

    return decorator


def create_estimator(name: str, params: dict[str, Any] | None = None) -> "SignEstimator":
    """Build the estimator registered as ``name`` with ``create``; an unknown name or parameter is a
    ``PluginError`` naming the known estimators or the parameters."""
    estimator = create("estimator", name, **(params or {}))
    if not isinstance(estimator, SignEstimator):
        raise PluginError(f"estimator {name!r} built a {type(estimator).__name__}, not a SignEstimator; register "
                          "SignEstimator subclasses with edgesplit.plugins.quant.register_estimator")
    return estimator


def __getattr__(name: str) -> Any:
    if name == "ESTIMATORS":
        raise AttributeError("edgesplit.plugins.quant.binary.ESTIMATORS is gone: sign estimators are registry kind "
                             "'estimator' (edgesplit.registry.available('estimator'), create('estimator', name))")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Surrogate(torch.autograd.Function):
    """Forward: the estimator's binary value; backward: its surrogate derivative times the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, est: "SignEstimator") -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.est = est
        return est.binary(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * ctx.est.surrogate_grad(x), None


class SignEstimator(nn.Module):
    """Binarizes in the forward pass and substitutes ``surrogate_grad(x)`` for the derivative in the backward."""

    name: ClassVar[str] = "?"

    def binary(self, x: torch.Tensor) -> torch.Tensor:
        return binarize(x)

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1]; estimators with a schedule use it."""

    def latent_for(self, signs: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        """A latent tensor whose ``binary`` is ``signs``, ``magnitude`` per element where the estimator allows."""
        return signs * magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Surrogate.apply(x, self)


@register_estimator("ste")
class ClippedSTE(SignEstimator):
    """Straight-through estimator clipped to |x| <= ``clip`` (Hubara et al., BinaryNet): gradient 1 inside."""

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        self.clip = float(clip)

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() <= self.clip).to(x.dtype)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


@register_estimator("real")
class RealValued(SignEstimator):
    """No binarization: the identity, with gradient 1. For the first step of two-step training (ReActNet, Liu et
    al., ECCV 2020: binary activations with real weights, then both binary), as ``estimator: real`` with an
    ``activation_estimator``. A layer with real weights has no 1-bit form: ``BinaryConv2d.packed`` refuses it."""

    def binary(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


@register_estimator("approx_sign")
class ApproxSign(SignEstimator):
    """Bi-Real Net's piecewise-polynomial estimator (Liu et al., ECCV 2018): gradient max(0, 2 - 2|x|)."""

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        return (2 - 2 * x.abs()).clamp_min(0)


@register_estimator("reste")
class ReSTE(SignEstimator):
    """Rectified STE (Wu et al., "Estimator Meets Equilibrium Perspective: A Rectified
    Straight Through Estimator for Binary Neural Networks Training", ICCV 2023).

    The backward pass differentiates the power function ``sign(x) |x|^(1/o)``: ``(1/o) |x|^(1/o - 1)`` for
    ``interval < |x| <= t``; the slope of the secant ``interval^(1/o) / interval`` for ``|x| <= interval`` (the
    rectification that keeps it finite at 0: it caps the gradient at ``m = interval^(1/o - 1)``); 0 beyond ``t``.
    ``o`` rises from ``o_start`` to ``o_end`` over training as in the authors' code:
    ``o = o_start + (o_end - o_start) (1 - cos(pi/2 * progress))``.
    """

    def __init__(self, o_end: float = 3.0, o_start: float = 1.0, t: float = 1.5, interval: float = 0.1) -> None:
        super().__init__()
        if o_start < 1 or o_end < 1:
            raise ConfigError(f"ReSTE needs o_start, o_end >= 1, got {o_start}, {o_end}")
        if not 0 < interval < t:
            raise ConfigError(f"ReSTE needs 0 < interval < t, got interval={interval}, t={t}")
        self.o_start, self.o_end, self.t, self.interval = float(o_start), float(o_end), float(t), float(interval)
        self.o = self.o_start

    def set_progress(self, fraction: float) -> None:
        f = min(1.0, max(0.0, float(fraction)))
        self.o = self.o_start + (self.o_end - self.o_start) * (1 - math.cos(math.pi / 2 * f))

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        o, a = self.o, x.abs()
        secant = self.interval ** (1 / o) / self.interval
        power = (1 / o) * a.clamp_min(self.interval) ** ((1 - o) / o)
        g = torch.where(a <= self.interval, torch.full_like(a, secant), power)
        return torch.where(a <= self.t, g, torch.zeros_like(a))

    def extra_repr(self) -> str:
        return f"o={self.o:.3f} ({self.o_start}->{self.o_end}), t={self.t}, interval={self.interval}"


@register_estimator("biper")
class BiPer(SignEstimator):
    """BiPer (Vargas et al., "BiPer: Binary Neural Networks using a Periodic Function", CVPR 2024), for weights:
    forward ``binarize(sin(omega0 x))`` (a square wave of period 2 pi / omega0), backward ``omega0 cos(omega0 x)``.

    It equals ``binarize(x)`` only for |x| < pi / omega0: to start from a float student, pick omega0 below
    pi / max|w|, or weights beyond it change sign at the first step.
    """

    def __init__(self, omega0: float = 30.0) -> None:
        super().__init__()
        if omega0 <= 0:
            raise ConfigError(f"BiPer omega0 must be positive, got {omega0}")
        self.omega0 = float(omega0)

    def binary(self, x: torch.Tensor) -> torch.Tensor:
        return binarize(torch.sin(self.omega0 * x))

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.omega0 * torch.cos(self.omega0 * x)

    def latent_for(self, signs: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        return signs * (math.pi / (2 * self.omega0))  # the middle of the half period: sin = +-1

    def extra_repr(self) -> str:
        return f"omega0={self.omega0}"


# -- layers ------------------------------------------------------------------------------------------------


class BinaryConv2d(nn.Conv2d):
    """1-bit convolution: ``conv(binarize(x - threshold), binarize(W)) * scale`` with -1 padding.

    ``scale`` per output channel is ``mean|W|`` of the latent weights (XNOR-Net; ``scale="mean_abs"``) or a
    learned parameter (``scale="learnable"``). ``threshold`` per input channel is learned (ReActNet's RSign)
    unless ``learnable_threshold=False``. The latent float ``weight`` keeps ``nn.Conv2d``'s name, so a float
    checkpoint of the same architecture initialises it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, *, weight_estimator: SignEstimator | None = None,
                 act_estimator: SignEstimator | None = None, scale: ScaleMode = "mean_abs",
                 learnable_threshold: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        if scale not in ("mean_abs", "learnable"):
            raise ConfigError(f"binary conv scale must be 'mean_abs' or 'learnable', got {scale!r}")
        self.weight_estimator = weight_estimator or ClippedSTE()
        self.act_estimator = act_estimator or ClippedSTE()
        if scale == "mean_abs" and isinstance(self.weight_estimator, BiPer):
            raise ConfigError("BiPer weights need scale='learnable': mean|W| does not describe sign(sin(omega0 W))")
        self.scale_mode = scale
        if learnable_threshold:
            self.threshold = nn.Parameter(torch.zeros(in_channels))
        else:
            self.register_buffer("threshold", torch.zeros(in_channels))
        if scale == "learnable":
            self.scale = nn.Parameter(self.weight.detach().abs().mean((1, 2, 3)))
        else:
            self.register_parameter("scale", None)

    def channel_scale(self) -> torch.Tensor:
        """The per-output-channel scale (differentiable). mean|W| is summed in float64 so that latent weights
        ``sign * s`` give back exactly ``s`` (what makes a packed checkpoint reload bit-exactly)."""
        if self.scale is not None:
            return self.scale
        return self.weight.double().abs().mean((1, 2, 3)).to(self.weight.dtype)

    def binary_weight(self) -> torch.Tensor:
        """The +-1 weights (differentiable through the weight estimator)."""
        return self.weight_estimator(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = self.act_estimator(x - self.threshold.view(1, -1, 1, 1))
        ph, pw = self.padding  # type: ignore[misc]
        if ph or pw:
            xb = F.pad(xb, (pw, pw, ph, ph), value=-1.0)
        y = F.conv2d(xb, self.binary_weight(), None, self.stride, 0, self.dilation, self.groups)
        return y * self.channel_scale().view(1, -1, 1, 1)

    @property
    def real_weights(self) -> bool:
        """True for the first step of two-step training (estimator ``real``): the weights are not binarized."""
        return isinstance(self.weight_estimator, RealValued)

    @torch.no_grad()
    def packed(self) -> dict[str, torch.Tensor]:
        """``weight_bits`` (uint8, packed sign bits), ``weight_shape`` (int64) and ``weight_scale`` (float32)."""
        if self.real_weights:
            raise ConfigError("this layer's weights are real-valued (estimator 'real', the first step of two-step "
                              "training): it has no 1-bit form; train the second step with a binary estimator")
        return {"weight_bits": pack_signs(self.binary_weight()),
                "weight_shape": torch.tensor(self.weight.shape, dtype=torch.int64),
                "weight_scale": self.channel_scale().detach().float().clone()}

    @torch.no_grad()
    def load_packed(self, weight_bits: torch.Tensor, weight_shape: torch.Tensor, weight_scale: torch.Tensor) -> None:
        """Restore from ``packed()``: the latent weights become ``sign * scale`` (``sign * pi / (2 omega0)`` for
        BiPer), so ``binary_weight()`` and ``channel_scale()`` equal the packed ones exactly."""
        shape = tuple(int(s) for s in weight_shape.tolist())
        if shape != tuple(self.weight.shape):
            raise CheckpointError(f"packed binary weights of shape {shape} do not fit a layer of shape "
                               f"{tuple(self.weight.shape)}")
        if weight_scale.shape != (self.out_channels,):
            raise CheckpointError(f"packed scale of shape {tuple(weight_scale.shape)}, expected ({self.out_channels},)")
        signs = unpack_signs(weight_bits, shape).to(self.weight.dtype)
        scale = weight_scale.to(self.weight.dtype)
        magnitude = scale.abs().view(-1, 1, 1, 1) if self.scale is not None else scale.view(-1, 1, 1, 1)
        self.weight.copy_(self.weight_estimator.latent_for(signs, magnitude.expand_as(signs)))
        if self.scale is not None:
            self.scale.copy_(scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale_mode}, pad_value=-1"


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al., ECCV 2020): ``prelu(x - shift_in, slope) + shift_out``, all three learned per
    channel. It lets a binary block move and reshape the real-valued distribution that the next sign reads."""

    def __init__(self, channels: int, slope: float = 0.25) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), float(slope)))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per = (1, -1, 1, 1)
        return F.prelu(x - self.shift_in.view(per), self.slope) + self.shift_out.view(per)


class BiRealBlock(nn.Module):
    """Two binary 3x3 convolutions, each with its own real-valued shortcut (Bi-Real Net, Liu et al., ECCV 2018,
    arXiv:1808.00278): ``y = act1(BN(BinConv(x)) + shortcut(x))``, ``z = act2(BN(BinConv(y)) + y)``. When the shape
    changes, the shortcut is ``AvgPool -> 1x1 conv -> BN`` (real-valued). ``act`` is the identity (Bi-Real) or, with
    ``rprelu=True``, ``RPReLU`` (ReActNet). Module names match ResNet's ``BasicBlock``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, make_conv: Callable[..., BinaryConv2d],
                 rprelu: bool = False) -> None:
        super().__init__()
        self.conv1 = make_conv(in_chs, out_chs, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = make_conv(out_chs, out_chs, 1)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act1: nn.Module = RPReLU(out_chs) if rprelu else nn.Identity()
        self.act2: nn.Module = RPReLU(out_chs) if rprelu else nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.pool: nn.Module = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                                    if stride > 1 else nn.Identity())
            self.downsample: nn.Module = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=False),
                                                       nn.BatchNorm2d(out_chs))
        else:
            self.pool = nn.Identity()
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)) + self.downsample(self.pool(x)))
        return self.act2(self.bn2(self.conv2(y)) + y)


# estimator presets: (weights, activations); BiPer is a weight binarizer, its activations use ApproxSign as in
# the authors' code
_PRESETS: dict[str, tuple[str, str]] = {"ste": ("ste", "ste"), "reste": ("reste", "reste"),
                                        "biper": ("biper", "approx_sign")}


class BinaryResNet(Backbone):
    """Bi-Real ResNet: ResNet's real-valued stem (7x7 conv, BN, ReLU, max pool) and classifier, binary 3x3
    convolutions in every block (with ``rprelu=True``, ReActNet's RPReLU after each residual addition). Stages,
    channels and state-dict keys match ``resnet18``/``resnet34`` of the same ``width``, so a float student of that
    backbone initialises it (``init:``)."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, width: float = 0.5,
                 in_chans: int = 3, drop_rate: float = 0.0, estimator: str = "ste",
                 estimator_params: dict[str, Any] | None = None, activation_estimator: str | None = None,
                 activation_estimator_params: dict[str, Any] | None = None, scale: ScaleMode | None = None,
                 learnable_threshold: bool = True, rprelu: bool = False) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ConfigError(f"binary student: layers must be four block counts >= 1, got {list(layers)}")
        if width <= 0:
            raise ConfigError(f"binary student: width must be positive, got {width!r}")
        w_name, a_name = _PRESETS.get(estimator, (estimator, estimator))
        a_name = activation_estimator or a_name
        w_params = dict(estimator_params or {})
        a_params = dict(activation_estimator_params or (w_params if a_name == w_name else {}))
        create_estimator(w_name, w_params), create_estimator(a_name, a_params)  # fail early, with the name
        if scale is None:
            scale = "learnable" if w_name == "biper" else "mean_abs"
        self.estimator_config = {"weights": (w_name, w_params), "activations": (a_name, a_params), "scale": scale}

        def make_conv(cin: int, cout: int, stride: int) -> BinaryConv2d:
            return BinaryConv2d(cin, cout, 3, stride, 1, weight_estimator=create_estimator(w_name, w_params),
                                act_estimator=create_estimator(a_name, a_params), scale=scale,
                                learnable_threshold=learnable_threshold)

        build_resnet_body(self, layers, resnet_channels(width),
                          lambda cin, cout, stride: BiRealBlock(cin, cout, stride, make_conv, bool(rprelu)),
                          in_chans, num_classes, drop_rate)
        for m in self.modules():
            if isinstance(m, BinaryConv2d) and m.scale is not None:
                with torch.no_grad():
                    m.scale.copy_(m.weight.abs().mean((1, 2, 3)))

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1] (the engine calls it every step); drives ReSTE's ``o``."""
        for m in self.modules():
            if isinstance(m, SignEstimator):
                m.set_progress(fraction)

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with each binary layer's latent weights (and learned scale) replaced by packed sign bits,
        shape and per-channel scale: 1 bit per weight. Resumable training state uses ``state_dict()``."""
        state = dict(self.state_dict())
        layers = binary_layers(self)
        if any(layer.real_weights for layer in layers.values()):
            return state  # two-step training's first step: real weights, nothing to pack
        for name, layer in layers.items():
            state.pop(f"{name}.weight")
            state.pop(f"{name}.scale", None)
            state.update({f"{name}.{k}": v for k, v in layer.packed().items()})
        return state

    def load_checkpoint_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``checkpoint_state_dict()`` output (or a full ``state_dict()``); see ``BinaryConv2d.load_packed``
        for what the latent weights become."""
        state = dict(state)
        layers = binary_layers(self)
        packed_names = [n for n in layers if f"{n}.weight_bits" in state]
        if not packed_names:
            self.load_state_dict(state, strict=True)
            return
        if len(packed_names) != len(layers):
            missing = sorted(set(layers) - set(packed_names))
            raise CheckpointError(f"packed checkpoint lacks the binary layers {missing}")
        for name in packed_names:
            layers[name].load_packed(*(state.pop(f"{name}.{k}") for k in ("weight_bits", "weight_shape",
                                                                          "weight_scale")))
        expected_absent = {f"{n}.weight" for n in layers} | {f"{n}.scale" for n in layers}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in expected_absent]
        if missing or unexpected:
            raise CheckpointError(f"packed checkpoint: missing keys {missing}, unexpected keys {unexpected}")


def binary_layers(model: nn.Module) -> dict[str, BinaryConv2d]:
    """The ``BinaryConv2d`` layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}


@register("student", "binary")
def binary_student(layers: list[int] | tuple[int, ...] = (2, 2, 2, 2), width: float = 0.5, num_classes: int = 1000,
                   estimator: str = "ste", estimator_params: dict[str, Any] | None = None,
                   activation_estimator: str | None = None,
                   activation_estimator_params: dict[str, Any] | None = None, scale: ScaleMode | None = None,
                   learnable_threshold: bool = True, rprelu: bool = False,
                   drop_rate: float = 0.0) -> BinaryResNet:
    """Bi-Real ResNet (``layers`` (2, 2, 2, 2): Bi-Real-18) at channel multiplier ``width``.

    ``estimator``: ``ste`` (clipped STE for weights and activations), ``reste`` (ReSTE for both), ``biper``
    (BiPer weights, ApproxSign activations) or any registered estimator name; ``estimator_params`` go to it,
    ``activation_estimator(_params)`` override the activations' choice. ``scale``: ``mean_abs`` (default) or
    ``learnable`` (the default, and required, for BiPer). ``rprelu``: an RPReLU after each residual addition
    (ReActNet) instead of none (Bi-Real).
    """
    return BinaryResNet(tuple(int(n) for n in layers), num_classes=num_classes, width=width, drop_rate=drop_rate,
                        estimator=estimator, estimator_params=estimator_params,
                        activation_estimator=activation_estimator,
                        activation_estimator_params=activation_estimator_params, scale=scale,
                        learnable_threshold=learnable_threshold, rprelu=rprelu)
