"""OpenVINO graphs of a trained binary student whose binary convolutions run on OpenVINO's 1-bit kernel
(``BinaryConvolution``, XNOR-popcount), an FP32 twin of the same graph for speed comparisons, and a micro benchmark.

Each binary convolution is emitted as ``FakeQuantize(x, t, t, 0, 1, levels=2)`` (1 where ``x > t``, else 0)
feeding a ``Convolution`` with constant +-1 weights; OpenVINO's ``ConvToBinaryConv`` pass turns the pair into
``BinaryConvolution(pad_value=-1)`` plus a constant correction, ``2 conv01 - sum(W) = conv_pad-1(+-1 input, W)``,
which is exactly the trained layer. The per-channel scale, BatchNorm and shortcut adds follow in float.

Why 0/1 and not the -1/+1 FakeQuantize of the OpenVINO docs: on OpenVINO 2026.4's CPU plugin,
``FakeQuantize(x, 0, 0, -1, 1, 2)`` returns NaN on its own and, fused into a BinaryConvolution, binarizes every
input to -1 (wrong outputs); the 0/1 form is exact (tests compare against torch). Two more limits of that plugin
handled here: the 1-bit kernel needs input channels in multiples of 8 (others are zero-padded: their bits are 0),
and a threshold FakeQuantize (input_low == input_high) that does not feed a binary convolution computes garbage,
so every one emitted here feeds exactly one.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

import numpy as np
from torch import nn

from edgesplit.errors import BackendUnavailable, ExportError

from ._lowering import BinaryUnit, LoweredNet, RealConv, lower

__all__ = ["build_openvino_model", "compile_model", "binary_layer_types", "time_compiled"]

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # CPUs with AVX512-BF16/AMX otherwise run float layers in bf16


def _openvino() -> tuple[Any, Any]:
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError as exc:
        raise BackendUnavailable("OpenVINO is not installed; install it with: pip install 'edgesplit[openvino]'") from exc
    return ov, ops


def _c(ops: Any, a: np.ndarray | float) -> Any:
    return ops.constant(np.asarray(a, dtype=np.float32))


def _per_channel(v: np.ndarray) -> np.ndarray:
    return v.reshape(1, -1, 1, 1)


def _real_conv(ops: Any, x: Any, conv: RealConv) -> Any:
    p = conv.padding
    y = ops.convolution(x, _c(ops, conv.weight), [conv.stride] * 2, [p, p], [p, p], [1, 1])
    return ops.add(y, _c(ops, _per_channel(conv.bias)))


def _binary_unit(ops: Any, x: Any, unit: BinaryUnit, binary: bool) -> Any:
    threshold, signs = unit.threshold, unit.signs
    extra = -len(threshold) % 8
    if binary and extra:
        # OpenVINO's CPU BinaryConvolution is wrong unless input channels are a multiple of 8 (2026.4): add
        # channels of 0 with threshold 0; their bit is 0, so they add nothing to the 0/1 convolution
        x = ops.pad(x, ops.constant(np.zeros(4, np.int64)), ops.constant(np.array([0, extra, 0, 0], np.int64)),
                    "constant", _c(ops, 0.0))
        threshold = np.concatenate([threshold, np.zeros(extra, np.float32)])
        signs = np.concatenate([signs, np.ones((signs.shape[0], extra, *signs.shape[2:]), np.float32)], axis=1)
    t = _c(ops, _per_channel(threshold))
    if binary:
        bits = ops.fake_quantize(x, t, t, _c(ops, 0.0), _c(ops, 1.0), 2)
    else:  # the same function with a float comparison, so OpenVINO keeps a dense float convolution
        bits = ops.select(ops.greater(x, t), _c(ops, 1.0), _c(ops, 0.0))
    p = unit.padding
    conv01 = ops.convolution(bits, _c(ops, signs), [unit.stride] * 2, [p, p], [p, p], [1, 1])
    # +-1 input padded with -1 == 0/1 input padded with 0, mapped back: 2 * conv01 - sum(W)
    signed = ops.add(ops.multiply(conv01, _c(ops, 2.0)), _c(ops, _per_channel(-unit.signs.sum(axis=(1, 2, 3)))))
    scaled = ops.multiply(signed, _c(ops, _per_channel(unit.alpha)))
    return ops.add(ops.multiply(scaled, _c(ops, _per_channel(unit.bn_scale))), _c(ops, _per_channel(unit.bn_shift)))


def _emit(net: LoweredNet, input_shape: tuple[int, int, int, int], binary: bool) -> Any:
    ov, ops = _openvino()
    image = ops.parameter(list(input_shape), np.float32, name="input")
    x = ops.relu(_real_conv(ops, image, net.stem))
    x = ops.max_pool(x, [2, 2], [1, 1], [1, 1], [1, 1], [3, 3]).output(0)
    for block in net.blocks:
        shortcut = x
        if block.pool > 1:
            k = block.pool
            shortcut = ops.avg_pool(shortcut, [k, k], [0, 0], [0, 0], [k, k], True, "ceil")
        if block.downsample is not None:
            shortcut = _real_conv(ops, shortcut, block.downsample)
        y = ops.add(_binary_unit(ops, x, block.unit1, binary), shortcut)
        x = ops.add(_binary_unit(ops, y, block.unit2, binary), y)
    pooled = ops.reduce_mean(x, ops.constant(np.array([2, 3], np.int64)), False)
    logits = ops.add(ops.matmul(pooled, _c(ops, net.fc_weight), False, True), _c(ops, net.fc_bias))
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([logits.output(0)], [image], "binary_student" if binary else "binary_student_fp32")


def build_openvino_model(model: nn.Module, input_shape: tuple[int, int, int, int] = (1, 3, 128, 128), *,
                         binary: bool = True) -> Any:
    """An ``openvino.Model`` computing ``model``'s eval-mode logits for a fixed ``input_shape`` (NCHW).

    ``binary=True``: binary convolutions as FakeQuantize + +-1 Convolution (OpenVINO runs them as
    ``BinaryConvolution``); ``binary=False``: the same graph with a float comparison instead of FakeQuantize, so
    every convolution stays a dense FP32 one (for speed comparisons; same outputs).
    """
    if len(input_shape) != 4:
        raise ExportError(f"input_shape must be (N, C, H, W), got {input_shape!r}")
    net = lower(model)
    return _emit(net, tuple(int(s) for s in input_shape), binary)  # type: ignore[arg-type]


def compile_model(ov_model: Any, device: str = "CPU", config: dict[str, Any] | None = None) -> Any:
    """Compile on ``device`` with FP32 inference precision unless ``config`` says otherwise."""
    ov, _ = _openvino()
    try:
        return ov.Core().compile_model(ov_model, device, {**F32_CONFIG, **(config or {})})
    except RuntimeError as exc:
        raise ExportError(f"OpenVINO could not compile {ov_model.get_friendly_name()} for {device}: {exc}") from exc


def binary_layer_types(compiled: Any) -> Counter[str]:
    """How many nodes of each ``layerType`` the compiled model's runtime graph executes (e.g.
    ``BinaryConvolution``, ``Convolution``, ``FakeQuantize``)."""
    return Counter(str(node.get_rt_info()["layerType"].astype(str)) for node in compiled.get_runtime_model().get_ops())


def time_compiled(compiled: Any, input: np.ndarray, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Latency of synchronous inference on one request: mean, median, min and p90 in milliseconds."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    request = compiled.create_infer_request()
    data = np.ascontiguousarray(input, dtype=np.float32)
    for _ in range(warmup):
        request.infer({0: data})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer({0: data})
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"runs": runs, "mean_ms": statistics.fmean(times), "median_ms": statistics.median(times),
            "min_ms": times[0], "p90_ms": times[min(runs - 1, int(0.9 * runs))]}
