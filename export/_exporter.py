"""``export_checkpoint``: a checkpoint -> a verified bundle (ONNX, OpenVINO IR, TensorRT plan; fp32, fp16 or int8;
binary students with their 1-bit layers kept), one stage per target, parity through the runtime's own sessions.

Everything is written through ``BundleWriter`` (a temporary directory renamed into place): parity opens the staged
bundle there, so a failure at any step, parity included, leaves no partial bundle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from edgesplit.bundle import Bundle, BundleWriter, Manifest, scratch_directory, sha256_file
from edgesplit.errors import ConfigError, EdgesplitError, ExportError

from ._calibration import calibration_images
from ._parity import Reference
from ._plan import BACKENDS, FORMATS, PRECISIONS, Artifacts, ExportPlan, Steps, make_plan
from ._report import REPORT_FILE, cpu_name, report_table, versions

__all__ = ["FORMATS", "BACKENDS", "PRECISIONS", "REPORT_FILE", "parse_backends", "parse_formats",
           "export_checkpoint", "report_table"]

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "edgesplit-export-"  # intermediate ONNX files; a killed export's are removed by the next export


def parse_backends(backends: str | Iterable[str]) -> list[str]:
    """Runtime backend names, in canonical order, from a comma-separated string or a list; the older format names
    (``onnx``) are accepted too."""
    items = backends.split(",") if isinstance(backends, str) else list(backends)
    chosen = set()
    for item in items:
        key = str(item).strip().lower()
        if not key:
            continue
        backend = key if key in BACKENDS else FORMATS.get(key)
        if backend is None:
            raise ConfigError(f"unknown export backend {item!r}; choose from {', '.join(BACKENDS)}")
        chosen.add(backend)
    if not chosen:
        raise ConfigError(f"no export backend given; choose from {', '.join(BACKENDS)}")
    return [b for b in BACKENDS if b in chosen]


parse_formats = parse_backends  # the name the export API had when targets were called formats


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    backends: str | Iterable[str] | None = None,
    formats: str | Iterable[str] | None = None,
    precision: str = "fp32",
    calib: str | Path | None = None,
    calib_images: int = 64,
    verify: bool = True,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    name: str | None = None,
    threads: int | None = None,
    tolerances: Mapping[str, float] | None = None,
    label_names: Mapping[str, str] | None = None,
) -> Bundle:
    """Export a checkpoint (full model or split student) to a bundle at ``out`` and check it against torch.

    ``backends``: runtime backend names (``onnxruntime``, ``openvino``, ``tensorrt``; default onnxruntime and
    openvino; ``formats`` is the same argument under its older name, with ``onnx`` for onnxruntime). ``precision``:
    ``fp32``, ``fp16`` (ONNX with fp16 compute and float32 I/O; OpenVINO IR with fp16 weights) or ``int8`` (QDQ ONNX
    from onnxruntime's static quantization; OpenVINO IR from NNCF), calibrated on ``calib_images`` images from the
    ImageFolder ``calib`` (or synthetic ones). Parity (batch 1 and 3) is measured on the written bundle, opened
    through ``edgesplit.runtime.backends.open_part`` with the manifest's options: see ``TOLERANCES``, ``"binary"``
    for a model with 1-bit layers (override keys with ``tolerances``); a failure raises ``ExportError`` with the
    numbers unless ``verify=False``. ``threads``: CPU threads for the parity and latency sessions (None: the
    backends' defaults). ``progress`` receives one line per step. ``label_names`` (class id -> display name) go into
    the manifest's ``label_names``; without them the checkpoint's own names (if any) do.

    A model that exports its own Q/DQ (a QAT student: ``export_module()`` with the quant plugin's ``fake_quant``)
    takes ``precision="int8"`` only and is not calibrated: its graph is used as exported, with every weight
    quantizer folded into an int8 initializer read by its DequantizeLinear (``_fold.fold_weight_quantizers``).

    A binary student (one with 1-bit layers, e.g. student ``binary``) takes ``precision="fp32"`` only: its
    ``model.onnx`` carries the binary layers as INT8 Q/DQ (onnxruntime, TensorRT), and its OpenVINO part is
    ``binary/model.npz``, the packed network from which the runtime builds a ``BinaryConvolution`` graph at load
    time (manifest entry ``{builder: binary-v1, model: binary/model.npz}``).

    Returns the opened bundle; ``export_report.json`` inside it holds the figures (see ``report_table``).
    """
    if backends is not None and formats is not None:
        raise ConfigError("give the export targets once: backends= (formats= is its older name)")
    chosen = parse_backends(backends if backends is not None else formats or ("onnxruntime", "openvino"))
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: no such checkpoint file")
    dest = Path(out) if out is not None else ckpt.with_name(f"{ckpt.stem}-{precision}.bundle")
    steps = Steps(progress)
    options = dict(calib=calib, calib_images=calib_images, verify=verify, threads=threads, name=name,
                   label_names=label_names)
    with BundleWriter(dest, overwrite=overwrite) as writer, scratch_directory(SCRATCH_PREFIX) as tmp:
        try:
            with steps.step("load"):
                plan = make_plan(ckpt, dest, chosen, precision, tolerances=tolerances, **options)
            return _export(plan, writer, Path(tmp), steps)
        except EdgesplitError:
            raise
        except Exception as exc:  # noqa: BLE001 - a foreign failure (torch, onnx, a plugin) ends the export
            raise ExportError(f"exporting {ckpt.name} failed: {type(exc).__name__}: {exc}") from exc


def _export(plan: ExportPlan, writer: BundleWriter, scratch: Path, steps: Steps) -> Bundle:
    """The stages in order: calibration, ONNX, per-target graphs, codec tables, manifest, parity, report."""
    from . import _binary, _onnx, _openvino, _verify
    from . import tensorrt as trt_export

    art = Artifacts()
    info = plan.info
    steps.say(f"loaded {plan.checkpoint.name}: {plan.kind} model {info['model'].get('name', '?')!r}, "
              f"{len(plan.labels)} labels, input {plan.spec.size}x{plan.spec.size}"
              + (f", {plan.binary_layers} binary layers" if plan.binary_layers else ""))
    _calibration_stage(plan, art, steps)
    _onnx.fp32_stage(plan, art, scratch, steps)
    _onnx.precision_stage(plan, art, writer, scratch, steps)
    trt_export.check_stage(plan, art, writer, steps)
    if plan.wants("openvino"):
        (_binary.openvino_stage if plan.binary_net is not None else _openvino.ir_stage)(plan, art, writer, steps)
    trt_export.plan_stage(plan, art, writer, steps)
    _codec_stage(plan, art, writer, steps)
    manifest = _manifest(plan, art, writer)
    staged = writer.stage(manifest)  # the bundle as published, opened where it was written
    rows, failures = _verify.parity_stage(plan, art, staged, steps)
    if failures and plan.verify:
        assert art.cal is not None
        raise ExportError(f"parity check failed for {plan.checkpoint.name} ({plan.precision}, {art.cal.describe()}, "
                          f"batch 1 and 3): {'; '.join(failures)}. Nothing was written; re-export with --no-verify "
                          "to keep the bundle anyway, or with real --calib images if these were synthetic")
    _write_report(plan, art, writer, rows, failures, steps)
    bundle = writer.commit(manifest)
    status = "parity checks passed" if not failures else "parity checks FAILED, kept because verify=False"
    steps.say(f"bundle {plan.dest} (fingerprint {bundle.manifest['fingerprint']}, {status})")
    return bundle


def _calibration_stage(plan: ExportPlan, art: Artifacts, steps: Steps) -> None:
    with steps.step("calibration"):
        art.cal = calibration_images(plan.calib, plan.spec, plan.labels, plan.calib_images)
        art.ref = _reference(plan.model, plan.spec, art.cal.images, art.cal.labels, plan.split)
    steps.say(f"calibration: {art.cal.describe()}"
              + (f", torch top-1 {art.ref.accuracy:.3f}" if art.ref.accuracy is not None else ""))


def _reference(model: Any, spec: Any, images: np.ndarray, labels: np.ndarray | None, split: bool) -> Reference:
    """torch fp32 logits (and symbols) on the calibration images, through the training engine's preprocessing."""
    import torch

    from edgesplit.train.engine import to_input

    logits, symbols = [], []
    with torch.no_grad():
        for i in range(0, len(images), 16):
            x = to_input(images[i:i + 16], spec)
            if split:
                s = model.encode_symbols(x).to(torch.int32)
                symbols.append(s.numpy())
                logits.append(model.decode_symbols(s).float().numpy())
            else:
                logits.append(model(x).float().numpy())
    return Reference(images, np.concatenate(logits), np.concatenate(symbols) if split else None, labels)


def _codec_stage(plan: ExportPlan, art: Artifacts, writer: BundleWriter, steps: Steps) -> None:
    """A split student's entropy codec tables (``codec.npz``) and their manifest entry."""
    from ._graphs import split_codec

    if not plan.split:
        return
    assert art.ref is not None and art.ref.symbols is not None
    codec = split_codec(plan.model)
    np.savez(writer.path("codec.npz"), **{k: np.asarray(v) for k, v in codec.to_arrays().items()})
    latent = [int(d) for d in art.ref.symbols.shape[1:]]
    art.codec_entry = {"id": str(codec.codec_id), "file": "codec.npz", "latent_shape": latent}
    steps.say(f"codec tables: codec.npz ({codec.codec_id}, latent {'x'.join(map(str, latent))})")


def _manifest(plan: ExportPlan, art: Artifacts, writer: BundleWriter) -> Manifest:
    from ._graphs import OPSET, io_spec
    from ._openvino import runtime_options

    info, spec = plan.info, plan.spec
    data_cfg = info.get("train_config", {}).get("data", {})
    return Manifest(
        kind=plan.kind, name=plan.name or plan.checkpoint.stem, fingerprint=writer.fingerprint(),
        input={"name": "image", "dtype": "uint8", "layout": "NHWC", "shape": [-1, spec.size, spec.size, 3],
               "preprocess": spec.to_dict()},
        labels=plan.labels,
        label_names=_label_names(plan.labels, plan.label_names, info.get("label_names"), plan.checkpoint.name),
        opset=OPSET, precision=plan.precision, binary_layers=plan.binary_layers or None,
        versions=versions(plan.backends, plan.precision),
        source={"checkpoint": plan.checkpoint.name, "sha256": sha256_file(plan.checkpoint), "model": info["model"]},
        # lets `edgesplit eval BUNDLE --subset val` pick the images training held out
        train_split=({"val_fraction": data_cfg["val_fraction"], "seed": data_cfg.get("split_seed", 0)}
                     if "val_fraction" in data_cfg else None),
        codec=art.codec_entry,
        io={p: io_spec(art.fp32_model[p]) for p in art.parts},
        parts=art.files,
        runtime={"openvino": runtime_options()} if plan.wants("openvino") else None,
        tensorrt=art.trt_info,
    )


def _label_names(labels: list[str], given: Mapping[str, str] | None, carried: Any, source: str) -> list[str] | None:
    """The manifest's ``label_names``: the names given to the export, else the checkpoint's; none if neither names
    any class."""
    from edgesplit.labels import check_names, names_for

    names = check_names(labels, given, source) if given else names_for(labels, None, carried)
    return names if names != labels else None


def _write_report(plan: ExportPlan, art: Artifacts, writer: BundleWriter, rows: list[dict[str, Any]],
                  failures: list[str], steps: Steps) -> None:
    from . import _binary
    from ._graphs import OPSET

    assert art.cal is not None and art.ref is not None
    report: dict[str, Any] = {
        "checkpoint": plan.checkpoint.name, "bundle": plan.dest.name, "kind": plan.kind, "precision": plan.precision,
        "opset": OPSET, "calibration": art.cal.describe(), "torch_accuracy": art.ref.accuracy,
        "verified": plan.verify, "passed": not failures, "failures": failures, "tolerances": plan.tolerances,
        "rows": rows, "tensorrt_unsupported_ops": art.trt_unsupported, "cpu": cpu_name(), "threads": plan.threads,
        "steps": steps.records,
    }
    if plan.binary_layers:
        report["binary"] = {"layers": plan.binary_layers, "int8_note": _binary.int8_note(),
                            "openvino_builder": _binary.BUILDER, "weights_bytes": _binary.weight_bytes(plan.binary_net)}
    writer.path(REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
