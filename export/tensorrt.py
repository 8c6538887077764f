"""ONNX -> TensorRT plan (TensorRT 11: strongly typed network, explicit Q/DQ, no builder precision flags), and a
check of ONNX graphs against the operators TensorRT's ONNX parser supports, which needs no TensorRT. Parity runs the
plans through the runtime's own TensorRT session.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from edgesplit.errors import BackendUnavailable, ExportError

if TYPE_CHECKING:
    from edgesplit.bundle import BundleWriter

    from ._plan import Artifacts, ExportPlan, Steps

__all__ = [
    "TENSORRT_ONNX_OPS",
    "BATCH_PROFILE",
    "PlanInfo",
    "import_tensorrt",
    "unsupported_ops",
    "check_tensorrt_ops",
    "build_plan",
    "gpu_name",
    "check_stage",
    "plan_stage",
]

log = logging.getLogger(__name__)

# ONNX operators (default domain) that TensorRT's ONNX parser supports: every "Y" row of onnx-tensorrt's
# docs/operators.md (TensorRT 10.15, opsets 9 to 24; TensorRT 11 parses at least these). Per-type restrictions
# (e.g. UINT8 only at network inputs and outputs, zero zero-points for Q/DQ) are not modelled here.
TENSORRT_ONNX_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh
Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu
Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Optimization profile for the dynamic batch dimension (min, opt, max).
BATCH_PROFILE: tuple[int, int, int] = (1, 8, 32)

_INSTALL_HINT = ("TensorRT is not installed (import tensorrt failed); pip install edgesplit[tensorrt] on a machine "
                 "with an NVIDIA GPU, or export without --backend tensorrt")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ``BackendUnavailable`` saying how to get it."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:  # also OSError-based loader failures surface as ImportError
        raise BackendUnavailable(f"{_INSTALL_HINT} ({exc})") from exc
    return trt


def _graph_ops(model: Any) -> Iterable[tuple[str, str]]:
    """(domain, op_type) of every node, subgraphs (If/Loop/Scan bodies) and local functions included."""
    import onnx

    def walk(graph: Any) -> Iterable[tuple[str, str]]:
        for node in graph.node:
            yield node.domain, node.op_type
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        yield from walk(g)

    yield from walk(model.graph)
    local = {(f.domain, f.name) for f in model.functions}
    for f in model.functions:
        for node in f.node:
            if (node.domain, node.op_type) not in local:
                yield node.domain, node.op_type


def unsupported_ops(model: Any) -> list[str]:
    """Sorted op types of an ONNX model (``ModelProto`` or path) that TensorRT's ONNX parser does not support.

    Ops from another domain than the default one are reported as ``domain::Op`` (TensorRT has no kernels for
    onnxruntime's contrib ops); calls to the model's own local functions are checked through their bodies; Q/DQ
    pairs whose zero points are not int8 zeros are reported as e.g. ``QuantizeLinear(uint8 zero point)``.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    local = {(f.domain, f.name) for f in model.functions}
    bad = set(_qdq_problems(model))
    for domain, op in _graph_ops(model):
        if (domain, op) in local:
            continue
        if domain not in ("", "ai.onnx"):
            bad.add(f"{domain}::{op}")
        elif op not in TENSORRT_ONNX_OPS:
            bad.add(op)
    return sorted(bad)


def _qdq_problems(model: Any) -> list[str]:
    """Q/DQ nodes TensorRT rejects: zero points that are not int8 zeros (uint8 activations, asymmetric ranges)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            consts[node.output[0]] = node.attribute[0].t
    out = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue
        zp = consts.get(node.input[2])
        if zp is None:
            out.append(f"{node.op_type}(computed zero point)")
        elif zp.data_type == TensorProto.INT32 and node.op_type == "DequantizeLinear":
            out.append("DequantizeLinear(int32)")
        elif zp.data_type not in (TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4):
            out.append(f"{node.op_type}({TensorProto.DataType.Name(zp.data_type).lower()} zero point)")
        elif np.any(numpy_helper.to_array(zp) != 0):
            out.append(f"{node.op_type}(non-zero zero point)")
    return out


def check_tensorrt_ops(graphs: Mapping[str, Any]) -> None:
    """``ExportError`` naming every op that TensorRT cannot parse, per part (``{part: ModelProto or path}``)."""
    problems = {part: ops for part, ops in ((p, unsupported_ops(g)) for p, g in graphs.items()) if ops}
    if problems:
        detail = "; ".join(f"{part}: {', '.join(ops)}" for part, ops in problems.items())
        raise ExportError(f"TensorRT's ONNX parser does not support these operators ({detail}); export without "
                          "--backend tensorrt, or change the model so that it avoids them")


@dataclass(frozen=True)
class PlanInfo:
    """What a plan was built with (recorded in the manifest)."""

    tensorrt: str
    gpu: str
    batch: tuple[int, int, int]


def gpu_name() -> str:
    """The name of GPU 0, from torch if it sees CUDA, else from nvidia-smi; 'unknown' otherwise."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # noqa: BLE001 - a CPU-only torch or a broken driver: try the next source
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20, check=True).stdout.strip().splitlines()
            if out:
                return out[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"


def build_plan(onnx_path: Path, plan_path: Path, *, input_name: str, input_shape: tuple[int, ...],
               timing_cache: Path, previous_cache: Path | None = None,
               batch: tuple[int, int, int] = BATCH_PROFILE, workspace_bytes: int | None = None) -> PlanInfo:
    """Build a serialized engine for ``onnx_path`` (dynamic batch: ``batch`` = min, opt, max) into ``plan_path``.

    The network is strongly typed: precisions come from the ONNX graph (Q/DQ for INT8, fp16 tensors and casts for
    FP16), never from builder flags. The timing cache is loaded from ``previous_cache`` (if it exists) and saved to
    ``timing_cache`` next to the plan, so rebuilding on the same GPU is fast.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path.name}: TensorRT's ONNX parser failed: {errors or 'no details'}")
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    profile = builder.create_optimization_profile()
    rest = tuple(int(d) for d in input_shape[1:])
    lo, opt, hi = batch
    profile.set_shape(input_name, (lo, *rest), (opt, *rest), (hi, *rest))
    config.add_optimization_profile(profile)
    blob = b""
    if previous_cache is not None and previous_cache.is_file():
        blob = previous_cache.read_bytes()
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a cache from another GPU or version is just not used
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path.name}: TensorRT could not build an engine (see the TensorRT log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return PlanInfo(tensorrt=str(trt.__version__), gpu=gpu_name(), batch=tuple(batch))  # type: ignore[arg-type]


def _source(plan: ExportPlan, art: Artifacts, writer: BundleWriter, part: str) -> Path:
    """The graph TensorRT builds from, or would build from (onnxruntime's int8 graph has uint8 activations)."""
    if part in art.trt_onnx:
        return writer.path(art.trt_onnx[part])
    if part in art.ort_onnx and (plan.precision != "int8" or art.own_qdq):
        return writer.path(art.ort_onnx[part])
    return art.fp32_path[part]


def check_stage(plan: ExportPlan, art: Artifacts, writer: BundleWriter, steps: Steps) -> None:
    """Operator support of every part (recorded for any export; no TensorRT needed), then, when TensorRT is a
    target, its availability: both before the slow steps."""
    import onnx

    models = {p: onnx.load(str(_source(plan, art, writer, p))) for p in art.parts}
    art.trt_unsupported = {p: unsupported_ops(m) for p, m in models.items()}
    if plan.wants("tensorrt"):
        check_tensorrt_ops(models)
        import_tensorrt()
        steps.say("TensorRT: every ONNX operator is supported by its parser")


def plan_stage(plan: ExportPlan, art: Artifacts, writer: BundleWriter, steps: Steps) -> None:
    """One plan per part, with the timing cache of an earlier export of the same bundle reused."""
    from ._graphs import io_spec

    if not plan.wants("tensorrt"):
        return
    with steps.step("tensorrt"):
        cache = writer.path("tensorrt/timing.cache")
        previous = plan.dest / "tensorrt" / "timing.cache"
        for part in art.parts:
            in_shape = tuple(io_spec(art.fp32_model[part])["inputs"][art.inputs[part]]["shape"])
            info = build_plan(
                writer.path(art.trt_onnx[part]), writer.path(f"tensorrt/{part}.plan"), input_name=art.inputs[part],
                input_shape=in_shape, timing_cache=cache,
                previous_cache=cache if cache.is_file() else (previous if previous.is_file() else None))
            art.files[part]["tensorrt"] = {"model": f"tensorrt/{part}.plan", "onnx": art.trt_onnx[part]}
        art.trt_info = {"version": info.tensorrt, "gpu": info.gpu, "batch": dict(zip(("min", "opt", "max"), info.batch)),
                        "timing_cache": "tensorrt/timing.cache"}
    steps.say(f"TensorRT {art.trt_info['version']} plans for {art.trt_info['gpu']}: "
              f"{', '.join(f'tensorrt/{p}.plan' for p in art.parts)}")
