"""The ONNX stages: torch -> fp32 ONNX (the source of every other artifact), a QAT student's weight quantizers
folded into int8 initializers, and the graphs at the bundle's precision for onnxruntime and TensorRT."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from edgesplit.bundle import BundleWriter
from edgesplit.errors import ConfigError, ExportError

from ._plan import Artifacts, ExportPlan, Steps
from ._report import size_text

__all__ = ["fp32_stage", "precision_stage", "INT8_BATCH"]

INT8_BATCH = 8  # calibration batch of onnxruntime's static quantization


def fp32_stage(plan: ExportPlan, art: Artifacts, scratch: Path, steps: Steps) -> None:
    """torch (or, for a binary student, its lowered arrays) -> one fp32 ONNX file per part, in ``scratch``."""
    from . import _binary
    from ._graphs import OPSET, export_onnx, graph_specs, has_own_qdq

    with steps.step("onnx"):
        if plan.binary_net is not None:
            _binary.onnx_stage(plan, art, scratch)
        else:
            art.specs = graph_specs(plan.model, plan.spec)
            art.parts = [g.part for g in art.specs]
            art.inputs = {g.part: g.input_name for g in art.specs}
            art.fp32_path = {g.part: scratch / f"{g.part}.fp32.onnx" for g in art.specs}
            art.fp32_model = {g.part: export_onnx(g, art.fp32_path[g.part]) for g in art.specs}
    art.files = {p: {} for p in art.parts}
    steps.say(f"{'binary student' if plan.binary_layers else 'torch'} -> ONNX (opset {OPSET}, dynamic batch): "
              f"{', '.join(p + '.onnx' for p in art.parts)}" + _folding_text(art.specs))
    art.own_qdq = not plan.binary_layers and any(has_own_qdq(m) for m in art.fp32_model.values())
    if art.own_qdq and plan.precision != "int8":
        raise ConfigError(f"{plan.checkpoint.name}: the model exports its own int8 quantizers (Q/DQ); export it "
                          "with --precision int8")
    if art.own_qdq:  # every graph below starts from these files: int8 weights for every backend
        with steps.step("fold weight quantizers"):
            folded = _fold_weights(art.fp32_model, art.fp32_path)
        steps.say(folded)


def precision_stage(plan: ExportPlan, art: Artifacts, writer: BundleWriter, scratch: Path, steps: Steps) -> None:
    """onnxruntime's graph and the graph TensorRT builds its plan from, at the bundle's precision."""
    if not (plan.wants("onnxruntime") or plan.wants("tensorrt")):
        return
    with steps.step(f"onnx {plan.precision}"):
        if plan.precision == "int8" and not art.own_qdq:
            what = _quantize(plan, art, writer)
        else:
            what = _copy(plan, art, writer, scratch)
    for p in art.ort_onnx:
        art.files[p]["onnxruntime"] = {"model": art.ort_onnx[p]}
    steps.say(f"ONNX {plan.precision}: {what}")


def _quantize(plan: ExportPlan, art: Artifacts, writer: BundleWriter) -> str:
    """Post-training int8: onnxruntime's CPU kernels are fastest with uint8 activations (U8S8); TensorRT takes only
    symmetric int8 (zero points 0), so it gets its own QDQ graph, kept next to its plan."""
    from ._graphs import exact_nodes
    from ._onnxruntime import quantize_qdq

    kept: set[str] = set()
    for part in art.parts:
        data = art.part_inputs(part)
        batches = [data[i:i + INT8_BATCH] for i in range(0, len(data), INT8_BATCH)]
        exact = exact_nodes(art.fp32_model[part], part)
        kept.update(exact)
        for backend, rel, symmetric in (("onnxruntime", f"{part}.onnx", False),
                                        ("tensorrt", f"tensorrt/{part}.onnx", True)):
            if plan.wants(backend):
                quantize_qdq(art.fp32_path[part], writer.path(rel), art.inputs[part], batches, exact,
                             symmetric=symmetric)
                (art.ort_onnx if backend == "onnxruntime" else art.trt_onnx)[part] = rel
    return f"int8 QDQ, {len(kept)} exact nodes kept float"


def _copy(plan: ExportPlan, art: Artifacts, writer: BundleWriter, scratch: Path) -> str:
    """fp32 (and own Q/DQ, and binary) graphs as exported; fp16 re-traced with fp16 compute."""
    from ._graphs import export_onnx, graph_specs

    source = art.fp32_path
    what = "as exported" + (" (the model's own Q/DQ)" if art.own_qdq else "")
    if plan.binary_layers:
        what = f"{plan.binary_layers} binary layers as INT8 Q/DQ with values in {{-1,+1}}, the rest float32"
    if plan.precision == "fp16":
        source = {p: scratch / f"{p}.fp16.onnx" for p in art.parts}
        for g in graph_specs(plan.model, plan.spec, half=True):
            export_onnx(g, source[g.part])
        what = "fp16 compute, float32 inputs and outputs"
    for part in art.parts:
        if plan.wants("onnxruntime"):
            art.ort_onnx[part] = f"{part}.onnx"
            shutil.copyfile(source[part], writer.path(art.ort_onnx[part]))
        if plan.wants("tensorrt"):
            art.trt_onnx[part] = art.ort_onnx.get(part, f"tensorrt/{part}.onnx")
            if art.trt_onnx[part] not in art.ort_onnx.values():
                shutil.copyfile(source[part], writer.path(art.trt_onnx[part]))
    return what


def _folding_text(specs: Iterable[Any]) -> str:
    """What a QAT student's ``export_module()`` did with its BatchNorms (``batchnorm_folding``), for the progress
    line; empty for other models."""
    for g in specs:
        info = getattr(getattr(g.module, "core", None), "batchnorm_folding", None)
        if info:
            folded, kept = info["folded"], info["kept"]
            text = f"; BatchNorm folded into {len(folded)} quantized convolutions"
            if kept:
                names = sorted(kept)
                text += (f", {len(kept)} kept as BatchNorm ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}: "
                         f"{kept[names[0]]})")
            return text
    return ""


def _bytes(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def _fold_weights(models: Mapping[str, Any], paths: Mapping[str, Path]) -> str:
    """Fold the weight quantizers of the model's own Q/DQ graphs into integer initializers (``_fold``), check and
    rewrite the files; returns the progress line."""
    import onnx

    from ._fold import fold_weight_quantizers

    before = _bytes(paths.values())
    folded = 0
    kinds: set[str] = set()  # types of the integer constants that DequantizeLinear reads
    for part, model in models.items():
        n = fold_weight_quantizers(model)
        if n:
            try:
                onnx.checker.check_model(model, full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
                raise ExportError(f"part {part!r}: the graph with its weight quantizers folded is not valid ONNX: "
                                  f"{exc}") from exc
            onnx.save(model, str(paths[part]), save_as_external_data=False)
        folded += n
        dequantized = {node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
        kinds.update(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer
                     if t.name in dequantized)
    return (f"ONNX: folded {folded} weight quantizers into {'/'.join(sorted(kinds)) or 'integer'} initializers "
            f"({', '.join(p.name.replace('.fp32', '') for p in paths.values())}: {size_text(before)} -> "
            f"{size_text(_bytes(paths.values()))})")
