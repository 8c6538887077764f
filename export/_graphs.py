"""torch -> ONNX: the deployable graphs (uint8 image in, normalization inside; int32 symbols or logits out), their
fp16 variants, one self-contained ``.onnx`` file each, and the nodes that must stay exact under quantization.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from edgesplit.errors import ExportError
from edgesplit.interfaces import EntropyCodec, Exportable, SplitModel
from edgesplit.preprocess import Preprocess, normalization
from edgesplit.train.engine import normalize_image

from .qdq import onnx_translations

__all__ = ["OPSET", "MAX_BATCH", "GraphSpec", "graph_specs", "export_onnx", "exact_nodes", "io_spec",
           "has_own_qdq", "is_split", "split_codec"]

log = logging.getLogger(__name__)

OPSET = 18  # torch 2.13's exporter starts at 18; onnxruntime, OpenVINO and TensorRT 10+ all read it
MAX_BATCH = 4096  # upper bound of the symbolic batch dimension seen by torch.export
WEIGHTED_ONNX_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def is_split(model: nn.Module) -> bool:
    """Whether ``model`` exports as two graphs (``edgesplit.interfaces.SplitModel``) rather than one."""
    return isinstance(model, SplitModel)


def split_codec(model: SplitModel) -> EntropyCodec:
    """The split model's ``codec()``, checked against ``edgesplit.interfaces.EntropyCodec`` before its tables are
    written into a bundle."""
    codec = model.codec()
    if not isinstance(codec, EntropyCodec):
        raise ExportError(f"{type(model).__name__}.codec() returned {type(codec).__name__}, which is not an "
                          "edgesplit.interfaces.EntropyCodec (encode, decode, information_bits, to_arrays, "
                          "from_arrays, codec_id, num_channels)")
    return codec


class _Normalize(nn.Module):
    """uint8 NHWC -> float NCHW: ``edgesplit.train.engine.normalize_image`` with the constants of
    ``edgesplit.preprocess.normalization``, the same arithmetic the training input has."""

    def __init__(self, spec: Preprocess) -> None:
        super().__init__()
        mean, std = normalization(spec)
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return normalize_image(image, self.mean, self.std)


class _FullGraph(nn.Module):
    """image (uint8 NHWC) -> logits."""

    def __init__(self, spec: Preprocess, core: nn.Module, half: bool = False) -> None:
        super().__init__()
        self.normalize = _Normalize(spec)
        self.core = core
        self.half = half

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.normalize(image)
        if self.half:
            x = x.to(torch.float16)
        return self.core(x).to(torch.float32)


class _EncoderGraph(nn.Module):
    """image (uint8 NHWC) -> int32 symbols (rounding around the medians inside the student's encode_symbols)."""

    def __init__(self, spec: Preprocess, student: SplitModel) -> None:
        super().__init__()
        self.normalize = _Normalize(spec)
        self.student = student

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.student.encode_symbols(self.normalize(image)).to(torch.int32)


class _DecoderGraph(nn.Module):
    """int32 symbols -> float32 logits (dequantize + median inside the student's decode_symbols)."""

    def __init__(self, student: SplitModel) -> None:
        super().__init__()
        self.student = student

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        return self.student.decode_symbols(symbols).to(torch.float32)


class _HalfIn(nn.Module):
    """Runs ``inner`` in fp16: casts its input to half, and its output back to float32 if ``float_out``."""

    def __init__(self, inner: nn.Module, float_out: bool) -> None:
        super().__init__()
        self.inner = inner.half()
        self.float_out = float_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x.to(torch.float16))
        return y.to(torch.float32) if self.float_out else y


def _half_split_student(student: nn.Module) -> nn.Module:
    """A copy whose encoder, decoder and tail compute in fp16 while the bottleneck (rounding around the medians,
    and dequantization) stays float32, so the symbols are rounded from float32 values."""
    missing = [name for name in ("encoder", "bottleneck", "decoder", "tail") if not isinstance(
        getattr(student, name, None), nn.Module)]
    if missing:
        raise ExportError(f"fp16 export of split student {type(student).__name__} needs submodules encoder, "
                          f"bottleneck, decoder and tail; it lacks {', '.join(missing)} (export it as fp32)")
    half = copy.deepcopy(student)
    half.encoder = _HalfIn(half.encoder, float_out=True)
    half.decoder = _HalfIn(half.decoder, float_out=False)
    half.tail = half.tail.half()
    return half.eval()


@dataclass
class GraphSpec:
    """One part to export: the module, an example input, and the graph's I/O names."""

    part: str
    module: nn.Module
    example: torch.Tensor
    input_name: str
    output_name: str


def _core(model: nn.Module) -> nn.Module:
    """What to trace for a full model: its ``export_module()`` (e.g. a QAT student whose fake quantizers use
    ``edgesplit.plugins.quant.qdq.fake_quant``, exported as Q/DQ pairs with the learned scales) or the model itself."""
    return model.export_module() if isinstance(model, Exportable) else model


def graph_specs(model: nn.Module, spec: Preprocess, *, half: bool = False) -> list[GraphSpec]:
    """The parts of ``model`` as exportable modules: ``[model]`` or ``[encoder, decoder]`` for split students."""
    size = spec.size
    image = torch.zeros(2, size, size, 3, dtype=torch.uint8)  # batch 2: torch.export specializes sizes 0 and 1
    if not is_split(model):
        core = _core(model)
        core = copy.deepcopy(core).half().eval() if half else core
        return [GraphSpec("model", _FullGraph(spec, core, half).eval(), image, "image", "logits")]
    student = _half_split_student(model) if half else model
    with torch.no_grad():
        symbols = model.encode_symbols(torch.zeros(2, 3, size, size)).to(torch.int32)
    latent = tuple(model.latent_shape(size, size))
    if tuple(symbols.shape[1:]) != latent:
        raise ExportError(f"{type(model).__name__}: encode_symbols gives symbols of shape {tuple(symbols.shape[1:])} "
                          f"for a {size}x{size} image, but latent_shape({size}, {size}) says {latent}")
    return [GraphSpec("encoder", _EncoderGraph(spec, student).eval(), image, "image", "symbols"),
            GraphSpec("decoder", _DecoderGraph(student).eval(), symbols, "symbols", "logits")]


def export_onnx(g: GraphSpec, path: Path, *, opset: int = OPSET) -> Any:
    """Export ``g`` with a dynamic batch to ONE self-contained ``.onnx`` file; returns the ``ModelProto``."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    chatter = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
                _quiet("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
            program = torch.onnx.export(
                g.module, (g.example,), input_names=[g.input_name], output_names=[g.output_name],
                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, optimize=True, verbose=False,
                custom_translation_table=onnx_translations(),
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; all mean "cannot export"
        log.debug("torch.onnx.export output:\n%s", chatter.getvalue())
        raise ExportError(f"torch.onnx.export failed for part {g.part!r}: {_summary(exc)}") from exc
    log.debug("torch.onnx.export output:\n%s", chatter.getvalue())
    model = program.model_proto
    _name_nodes(model)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if dim.HasField("dim_value"):
        raise ExportError(f"part {g.part!r}: the exported ONNX has a fixed batch of {dim.dim_value}, not a dynamic one")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=False)
    return model


def _summary(exc: BaseException) -> str:
    """The gist of an exporter error: its 'Exception summary' section when it has one, without terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    marker = "## Exception summary"
    if marker in text:
        text = text.split(marker, 1)[1].strip().split("\n\n", 1)[0]
    text = text.strip()
    return f"{type(exc).__name__}: {text[:800]}{'...' if len(text) > 800 else ''}"


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise the exporter's chatty loggers (pass-by-pass INFO lines) to WARNING for the duration."""
    loggers = [logging.getLogger(n) for n in names]
    # the exporter's op registry warns once per missing torchvision op ("torchvision is not installed. Skipping
    # torchvision::nms"); edgesplit never exports torchvision ops, so those lines are noise to a user
    loggers.append(logging.getLogger("torch.onnx._internal.exporter._registration"))
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    loggers[-1].setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _name_nodes(model: Any) -> None:
    """Give every node a unique name (quantizers exclude nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def has_own_qdq(model: Any) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _dtype_name(elem_type: int) -> str:
    import onnx

    return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def io_spec(model: Any) -> dict[str, Any]:
    """``{inputs: {name: {shape, dtype}}, outputs: {...}}`` of an ONNX model; symbolic dims are -1."""
    init = {t.name for t in model.graph.initializer}

    def one(values: Iterable[Any]) -> dict[str, Any]:
        out = {}
        for v in values:
            if v.name in init:
                continue
            t = v.type.tensor_type
            shape = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out[v.name] = {"shape": shape, "dtype": _dtype_name(t.elem_type)}
        return out

    return {"inputs": one(model.graph.input), "outputs": one(model.graph.output)}


def exact_nodes(model: Any, part: str) -> list[str]:
    """Names of the ONNX nodes that must stay exact (never quantized): for the encoder, everything from the last
    weighted op (inclusive) to the symbols (``- median``, Round, Cast); for the decoder, everything from the symbols
    to the first weighted op (inclusive: int8 activations there would requantize the symbols)."""
    nodes = list(model.graph.node)
    if part == "encoder":
        producer = {out: n for n in nodes for out in n.output}
        start = [producer[o.name] for o in model.graph.output if o.name in producer]
        neighbours = lambda n: [producer[i] for i in n.input if i in producer]  # noqa: E731
    elif part == "decoder":
        consumers: dict[str, list[Any]] = {}
        for n in nodes:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        start = [c for inp in model.graph.input for c in consumers.get(inp.name, [])]
        neighbours = lambda n: [c for o in n.output for c in consumers.get(o, [])]  # noqa: E731
    else:
        return []
    found: dict[str, Any] = {}
    todo = list(start)
    while todo:
        n = todo.pop()
        if n.name in found:
            continue
        found[n.name] = n
        if n.op_type not in WEIGHTED_ONNX_OPS and n.op_type != "Shape":  # Shape: integer metadata, not values
            todo.extend(neighbours(n))
    return sorted(found)
