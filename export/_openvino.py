"""OpenVINO at export time: ONNX -> IR (fp32, fp16-compressed weights, or INT8 through NNCF). Parity runs through
the runtime's own session (``edgesplit.runtime.backends``) with the options the manifest records."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edgesplit.errors import BackendUnavailable, ExportError

if TYPE_CHECKING:
    from edgesplit.bundle import BundleWriter

    from ._plan import Artifacts, ExportPlan, Steps

__all__ = ["convert", "save", "quantize_int8", "exact_ops", "INFERENCE_PRECISION", "ir_stage"]

log = logging.getLogger(__name__)

# CPUs with bf16 (AMX, AVX512-BF16) run OpenVINO in bf16 by default, which moves the encoder's rounding and
# breaks fp32 parity; bundles record this hint and the runtime applies it.
INFERENCE_PRECISION = "f32"
_WEIGHTED = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
                       "MatMul"})


def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailable(f"openvino is not installed; pip install edgesplit[export] ({exc})") from exc
    return ov


def convert(onnx_path: Path) -> Any:
    """``openvino.convert_model`` of an ONNX file, foreign errors as ``ExportError``."""
    ov = _ov()
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
        raise ExportError(f"{onnx_path.name}: OpenVINO conversion failed: {exc}") from exc


def save(model: Any, xml_path: Path, *, compress_to_fp16: bool) -> None:
    ov = _ov()
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{xml_path.name}: saving the OpenVINO IR failed: {exc}") from exc


def exact_ops(model: Any, part: str) -> list[str]:
    """Friendly names of the ops that must stay float (never quantized): the OpenVINO twin of
    ``_graphs.exact_nodes`` (encoder: last weighted op to the symbols; decoder: symbols to the first weighted op)."""
    if part not in ("encoder", "decoder"):
        return []
    if part == "encoder":
        start = [r for r in model.get_results()]
        def neighbours(op: Any) -> list[Any]:
            return [op.input_value(i).get_node() for i in range(op.get_input_size())]
    else:
        start = [p for p in model.get_parameters()]
        def neighbours(op: Any) -> list[Any]:
            return [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]
    found: dict[str, Any] = {}
    todo = list(start)
    while todo:
        op = todo.pop()
        name = op.get_friendly_name()
        if name in found:
            continue
        found[name] = op
        kind = op.get_type_name()
        if kind not in _WEIGHTED and kind not in ("ShapeOf", "Constant"):
            todo.extend(neighbours(op))
    return sorted(n for n, op in found.items() if op.get_type_name() not in ("Parameter", "Result", "Constant"))


def quantize_int8(model: Any, items: Sequence[np.ndarray], input_name: str, ignored: Sequence[str]) -> Any:
    """INT8 post-training quantization with NNCF (calibration on ``items``, ``ignored`` ops left float)."""
    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailable(f"nncf is not installed; INT8 OpenVINO export needs pip install edgesplit[export] "
                                 f"({exc})") from exc
    dataset = nncf.Dataset(list(items), lambda item: {input_name: item})
    scope = nncf.IgnoredScope(names=list(ignored), validate=False) if ignored else None
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    chatter = io.StringIO()  # NNCF draws progress bars on the console; a library must not print
    try:
        kwargs: dict[str, Any] = {"subset_size": len(items), "preset": nncf.QuantizationPreset.PERFORMANCE}
        if scope is not None:
            kwargs["ignored_scope"] = scope
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            return nncf.quantize(model, dataset, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"NNCF INT8 quantization failed: {type(exc).__name__}: {exc}") from exc
    finally:
        nncf_log.setLevel(level)
        log.debug("nncf output:\n%s", chatter.getvalue())


def ir_stage(plan: ExportPlan, art: Artifacts, writer: BundleWriter, steps: Steps) -> None:
    """OpenVINO IR per part from the fp32 ONNX (a binary student's OpenVINO part is ``_binary.openvino_stage``)."""
    own_qdq = art.own_qdq
    with steps.step(f"openvino {plan.precision}"):
        for part in art.parts:
            ov_model = convert(art.fp32_path[part])
            if plan.precision == "int8" and not own_qdq:
                data = art.part_inputs(part)
                items = [data[i:i + 1] for i in range(len(data))]
                ov_model = quantize_int8(ov_model, items, art.inputs[part], exact_ops(ov_model, part))
            save(ov_model, writer.path(f"openvino/{part}.xml"), compress_to_fp16=plan.precision == "fp16")
            art.files[part]["openvino"] = {"model": f"openvino/{part}.xml", "weights": f"openvino/{part}.bin"}
    detail = {"fp32": "fp32", "fp16": "fp16-compressed weights",
              "int8": "int8 from the model's own Q/DQ" if own_qdq else "int8, NNCF"}[plan.precision]
    steps.say(f"OpenVINO IR: {', '.join(f'openvino/{p}.xml' for p in art.parts)} ({detail})")


def runtime_options() -> dict[str, Any]:
    """The compile options a bundle records under ``runtime.openvino`` (and the runtime applies)."""
    return {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION}
