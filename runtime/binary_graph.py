"""The OpenVINO graph of a 1-bit student, built in memory from its numpy arrays (``edgesplit.binary_net``) when a
bundle is opened; binary convolutions compile to ``BinaryConvolution``.

Why a builder and not an IR file: an OpenVINO IR stores the +-1 weights as dense float32 constants (32 bits per
weight), and OpenVINO packs them into bits only inside the compiled model. The bundle keeps the packed bits and this
module unpacks them into the in-memory graph, so a binary student ships at about 1/32 of its float size.

Graph notes (OpenVINO 2026.4's CPU plugin): each binary convolution is ``FakeQuantize(x, t, t, 0, 1, levels=2)``
(1 where ``x > t``, else 0) feeding a ``Convolution`` with constant +-1 weights, which the ``ConvToBinaryConv``
pass turns into ``BinaryConvolution(pad_value=-1)`` plus the constant correction
``2 conv01 - sum(W) = conv_pad-1(+-1 input, W)``. The 0/1 form, not the -1/+1 FakeQuantize of the OpenVINO docs:
``FakeQuantize(x, 0, 0, -1, 1, 2)`` returns NaN on its own and, fused into a BinaryConvolution, binarizes every input
to -1. The 1-bit kernel needs input channels in multiples of 8 (others are zero-padded: their bits are 0), and a
threshold FakeQuantize that does not feed a binary convolution computes garbage, so every one emitted here feeds
exactly one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgesplit.binary_net import BUILDER, BinaryUnit, InputSpec, LoweredNet, RealConv, RPReLU, load_net
from edgesplit.errors import BackendUnavailable, BundleError, ConfigError

__all__ = ["BUILDER", "BINARY_UNIT_PREFIX", "REAL_CONV_PREFIX", "import_openvino", "openvino_model",
           "openvino_model_from_file", "binary_layer_types"]


# -- OpenVINO ------------------------------------------------------------------------------------------------------

def import_openvino() -> tuple[Any, Any]:
    """``(openvino, opset13)``, or ``BackendUnavailable`` naming the extra to install."""
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError as exc:
        raise BackendUnavailable("OpenVINO is not installed; install it with: "
                                 "pip install 'edgesplit[openvino]'") from exc
    return ov, ops


def _c(ops: Any, a: np.ndarray | float) -> Any:
    return ops.constant(np.asarray(a, dtype=np.float32))


def _per_channel(v: np.ndarray) -> np.ndarray:
    return v.reshape(1, -1, 1, 1)


REAL_CONV_PREFIX = "real_conv_"  # friendly-name prefix of the float convolutions (stem, shortcuts)


def _real_conv(ops: Any, x: Any, conv: RealConv, name: str) -> Any:
    p = conv.padding
    y = ops.convolution(x, _c(ops, conv.weight), [conv.stride] * 2, [p, p], [p, p], [1, 1],
                        name=f"{REAL_CONV_PREFIX}{name}")
    return ops.add(y, _c(ops, _per_channel(conv.bias)))


BINARY_UNIT_PREFIX = "binary_unit_"  # friendly-name prefix of every op of a binary layer (profiling attributes by it)


def _binary_unit(ops: Any, x: Any, unit: BinaryUnit, binary: bool, index: int = 0) -> Any:
    name = f"{BINARY_UNIT_PREFIX}{index}"
    threshold, signs = unit.threshold, unit.signs
    extra = -len(threshold) % 8
    if binary and extra:
        # the CPU BinaryConvolution is wrong unless input channels are a multiple of 8 (2026.4): add channels of
        # 0 with threshold 0; their bit is 0, so they add nothing to the 0/1 convolution
        x = ops.pad(x, ops.constant(np.zeros(4, np.int64)), ops.constant(np.array([0, extra, 0, 0], np.int64)),
                    "constant", _c(ops, 0.0), name=f"{name}/pad")
        threshold = np.concatenate([threshold, np.zeros(extra, np.float32)])
        signs = np.concatenate([signs, np.ones((signs.shape[0], extra, *signs.shape[2:]), np.float32)], axis=1)
    t = _c(ops, _per_channel(threshold))
    if binary:
        bits = ops.fake_quantize(x, t, t, _c(ops, 0.0), _c(ops, 1.0), 2, name=f"{name}/binarize")
    else:  # the same function with a float comparison, so OpenVINO keeps a dense float convolution
        bits = ops.select(ops.greater(x, t, name=f"{name}/compare"), _c(ops, 1.0), _c(ops, 0.0),
                          name=f"{name}/binarize")
    p = unit.padding
    conv01 = ops.convolution(bits, _c(ops, signs), [unit.stride] * 2, [p, p], [p, p], [1, 1], name=f"{name}/conv")
    # +-1 input padded with -1 == 0/1 input padded with 0, mapped back: 2 * conv01 - sum(W)
    signed = ops.add(ops.multiply(conv01, _c(ops, 2.0)), _c(ops, _per_channel(-unit.signs.sum(axis=(1, 2, 3)))))
    scaled = ops.multiply(signed, _c(ops, _per_channel(unit.alpha)))
    return ops.add(ops.multiply(scaled, _c(ops, _per_channel(unit.bn_scale))), _c(ops, _per_channel(unit.bn_shift)))


def _rprelu(ops: Any, x: Any, act: RPReLU | None) -> Any:
    if act is None:
        return x
    y = ops.prelu(ops.subtract(x, _c(ops, _per_channel(act.shift_in))), _c(ops, act.slope))
    return ops.add(y, _c(ops, _per_channel(act.shift_out)))


def _normalized(ops: Any, image: Any, spec: InputSpec) -> Any:
    """uint8 NHWC -> float NCHW, the arithmetic of the exported ONNX graphs (cast, transpose, /255, -mean, /std)."""
    x = ops.transpose(ops.convert(image, "f32"), ops.constant(np.array([0, 3, 1, 2], np.int64)))
    x = ops.divide(x, _c(ops, 255.0))
    mean = _c(ops, np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1))
    return ops.divide(ops.subtract(x, mean), _c(ops, np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)))


def openvino_model(net: LoweredNet, input_shape: tuple[int, int, int, int] | None = None, *, binary: bool = True,
                   image: InputSpec | None = None) -> Any:
    """An ``openvino.Model`` computing ``net``'s logits (output ``logits``).

    With ``image``: input ``image``, uint8 NHWC ``(-1, size, size, 3)`` (dynamic batch), normalized inside: the
    bundle contract. Without: input ``input``, float32 NCHW of the fixed ``input_shape``. ``binary=False`` swaps the
    FakeQuantize for a float comparison so every convolution stays a dense FP32 one (same outputs; for speed
    comparisons).
    """
    ov, ops = import_openvino()
    if image is not None:
        param = ops.parameter([-1, image.size, image.size, 3], np.uint8, name="image")
        x = _normalized(ops, param, image)
    else:
        if input_shape is None or len(input_shape) != 4:
            raise ConfigError(f"openvino_model: input_shape must be (N, C, H, W) when no image spec is given, got "
                              f"{input_shape!r}; pass a 4-tuple or image=InputSpec(...)")
        param = ops.parameter(list(input_shape), np.float32, name="input")
        x = param
    param.output(0).get_tensor().set_names({param.get_friendly_name()})
    x = ops.relu(_real_conv(ops, x, net.stem, "stem"))
    x = ops.max_pool(x, [2, 2], [1, 1], [1, 1], [1, 1], [3, 3]).output(0)
    for i, block in enumerate(net.blocks):
        shortcut = x
        if block.pool > 1:
            k = block.pool
            shortcut = ops.avg_pool(shortcut, [k, k], [0, 0], [0, 0], [k, k], True, "ceil")
        if block.downsample is not None:
            shortcut = _real_conv(ops, shortcut, block.downsample, f"shortcut_{i}")
        y = _rprelu(ops, ops.add(_binary_unit(ops, x, block.unit1, binary, 2 * i), shortcut), block.act1)
        x = _rprelu(ops, ops.add(_binary_unit(ops, y, block.unit2, binary, 2 * i + 1), y), block.act2)
    pooled = ops.reduce_mean(x, ops.constant(np.array([2, 3], np.int64)), False)
    logits = ops.add(ops.matmul(pooled, _c(ops, net.fc_weight), False, True), _c(ops, net.fc_bias))
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([logits.output(0)], [param], "binary_student" if binary else "binary_student_fp32")


def openvino_model_from_file(path: str | Path) -> Any:
    """The bundle graph (uint8 image in, logits out, dynamic batch) of a file written by ``save_net``; a file whose
    arrays do not make a consistent network is a ``BundleError``."""
    net, image = load_net(path)
    try:
        return openvino_model(net, image=image)
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - OpenVINO's shape inference rejects inconsistent arrays
        raise BundleError(f"{path}: its arrays do not make a consistent network: {type(exc).__name__}: {exc}") from exc


def binary_layer_types(compiled: Any) -> Counter[str]:
    """How many nodes of each ``layerType`` a compiled model's runtime graph executes (e.g.
    ``BinaryConvolution``, ``Convolution``, ``FakeQuantize``)."""
    return Counter(str(node.get_rt_info()["layerType"].astype(str)) for node in compiled.get_runtime_model().get_ops())
