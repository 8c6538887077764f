"""OpenVINO graphs of a trained binary student whose binary convolutions run on OpenVINO's 1-bit kernel
(``BinaryConvolution``, XNOR-popcount), an FP32 twin of the same graph for speed comparisons, and a micro benchmark.

The graph emitter, and why it emits ``FakeQuantize(0/1) -> +-1 Convolution`` pairs with channels padded to multiples
of 8 (OpenVINO 2026.4 CPU pitfalls), live in the torch-free ``edgesplit.runtime.binary_graph``, which also rebuilds
the graph from a bundle's packed ``binary/model.npz`` at load time. This module builds it from a torch
``BinaryResNet`` (lowered to arrays by the quant plugin's ``binary`` exporter hook).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from torch import nn

from edgesplit.errors import ExportError
from edgesplit.registry import create
from edgesplit.runtime.binary_graph import binary_layer_types, import_openvino, openvino_model

__all__ = ["build_openvino_model", "compile_model", "binary_layer_types", "time_compiled"]

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # CPUs with AVX512-BF16/AMX otherwise run float layers in bf16


def build_openvino_model(model: nn.Module, input_shape: tuple[int, int, int, int] = (1, 3, 128, 128), *,
                         binary: bool = True) -> Any:
    """An ``openvino.Model`` computing ``model``'s eval-mode logits for a fixed ``input_shape`` (NCHW).

    ``binary=True``: binary convolutions as FakeQuantize + +-1 Convolution (OpenVINO runs them as
    ``BinaryConvolution``); ``binary=False``: the same graph with a float comparison instead of FakeQuantize, so
    every convolution stays a dense FP32 one (for speed comparisons; same outputs).
    """
    if len(input_shape) != 4:
        raise ExportError(f"input_shape must be (N, C, H, W), got {input_shape!r}")
    return openvino_model(create("exporter", "binary").lower(model), tuple(int(s) for s in input_shape), binary=binary)  # type: ignore[arg-type]


def compile_model(ov_model: Any, device: str = "CPU", config: dict[str, Any] | None = None) -> Any:
    """Compile on ``device`` with FP32 inference precision unless ``config`` says otherwise."""
    ov, _ = import_openvino()
    try:
        return ov.Core().compile_model(ov_model, device, {**F32_CONFIG, **(config or {})})
    except RuntimeError as exc:
        raise ExportError(f"OpenVINO could not compile {ov_model.get_friendly_name()} for {device}: {exc}") from exc


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
