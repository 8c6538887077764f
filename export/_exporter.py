"""``export_checkpoint``: a checkpoint -> a verified bundle (ONNX, OpenVINO IR, TensorRT plan; fp32, fp16 or int8;
binary students with their 1-bit layers kept).

Everything is written through ``BundleWriter`` (a temporary directory renamed into place), so a failure at any step
leaves no partial bundle.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from edgesplit.bundle import FORMAT_VERSION, Bundle, BundleWriter, sha256_file
from edgesplit.errors import BackendUnavailable, ConfigError, EdgesplitError, ExportError
from edgesplit.preprocess import Preprocess

from ._calibration import Calibration, calibration_images
from ._parity import MATCH_ATOL, TOLERANCES, Reference, failed_checks, measure, median_latency_ms

__all__ = ["FORMATS", "BACKENDS", "PRECISIONS", "REPORT_FILE", "parse_formats", "export_checkpoint",
           "report_table"]

log = logging.getLogger(__name__)

# CLI format name -> runtime backend key (the manifest's key under parts.<part>)
FORMATS: dict[str, str] = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
REPORT_FILE = "export_report.json"
_FORMAT_OF = {v: k for k, v in FORMATS.items()}
_INT8_BATCH = 8


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """Backend keys, in canonical order, from CLI format names or backend keys (``"onnx,openvino"`` works too)."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = set()
    for item in items:
        key = str(item).strip().lower()
        if not key:
            continue
        backend = FORMATS.get(key, key if key in BACKENDS else None)
        if backend is None:
            raise ConfigError(f"unknown export format {item!r}; choose from {', '.join(FORMATS)}")
        chosen.add(backend)
    if not chosen:
        raise ConfigError(f"no export format given; choose from {', '.join(FORMATS)}")
    return [b for b in BACKENDS if b in chosen]


class _Steps:
    """Progress lines (logged, and passed to the caller's callable) and per-step timings for the report."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress = progress
        self.records: list[dict[str, Any]] = []

    def say(self, message: str) -> None:
        if self.progress is None:
            log.info("%s", message)
        else:  # the caller shows it; logging it too would print every line twice under the CLI
            log.debug("%s", message)
            self.progress(message)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.records.append({"step": title, "seconds": round(time.perf_counter() - t0, 3)})


def _versions(backends: list[str], precision: str) -> dict[str, str | None]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    import edgesplit

    out: dict[str, str | None] = {"edgesplit": edgesplit.__version__}
    for dist in ("torch", "onnx", "onnxruntime", "openvino"):
        out[dist] = version(dist)
    if precision == "int8" and "openvino" in backends:
        out["nncf"] = version("nncf")
    if "tensorrt" in backends:
        out["tensorrt"] = version("tensorrt")
    return out


def _reference(model: Any, spec: Preprocess, cal: Calibration, split: bool) -> Reference:
    """torch fp32 logits (and symbols) on the calibration images, through the training engine's preprocessing."""
    import torch

    from edgesplit.train.engine import to_input

    logits, symbols = [], []
    with torch.no_grad():
        for i in range(0, len(cal.images), 16):
            x = to_input(cal.images[i:i + 16], spec)
            if split:
                s = model.encode_symbols(x).to(torch.int32)
                symbols.append(s.numpy())
                logits.append(model.decode_symbols(s).float().numpy())
            else:
                logits.append(model(x).float().numpy())
    return Reference(cal.images, np.concatenate(logits), np.concatenate(symbols) if split else None, cal.labels)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _default_out(ckpt: Path, precision: str) -> Path:
    return ckpt.with_name(f"{ckpt.stem}-{precision}.bundle")


def _bytes(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    formats: str | Iterable[str] = ("onnx", "openvino"),
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

    ``formats``: ``onnx``, ``openvino``, ``tensorrt`` (or backend keys). ``precision``: ``fp32``, ``fp16`` (ONNX with
    fp16 compute and float32 I/O; OpenVINO IR with fp16 weights) or ``int8`` (QDQ ONNX from onnxruntime's static
    quantization; OpenVINO IR from NNCF), calibrated on ``calib_images`` images from the ImageFolder ``calib`` (or
    synthetic ones). Parity (batch 1 and 3): see ``TOLERANCES``, ``"binary"`` for a model with 1-bit layers (override
    keys with ``tolerances``); a failure raises
    ``ExportError`` with the numbers unless ``verify=False``. ``threads``: CPU threads for the parity and latency
    sessions (None: the backends' defaults). ``progress`` receives one line per step. ``label_names`` (class id ->
    display name) go into the manifest's ``label_names``; without them the checkpoint's own names (if any) do.

    A model that exports its own Q/DQ (a QAT student: ``export_module()`` with ``plugins.quant.qdq.fake_quant``)
    takes ``precision="int8"`` only and is not calibrated: its graph is used as exported, with every weight
    quantizer (QuantizeLinear of a constant) folded into an int8 initializer read by its DequantizeLinear
    (``_fold.fold_weight_quantizers``), so ``model.onnx`` and the OpenVINO IR start from int8 weights.

    A binary student (one with 1-bit layers, e.g. student ``binary``) takes ``precision="fp32"`` only (binary layers
    at 1 bit, the rest float32; others are a ``ConfigError``): its ``model.onnx`` carries the binary layers as INT8
    Q/DQ (onnxruntime, TensorRT), and its OpenVINO part is ``binary/model.npz``, the packed network (1 bit per binary
    weight) from which the runtime builds a ``BinaryConvolution`` graph at load time (manifest entry
    ``{builder: binary-v1, model: binary/model.npz}``).

    Returns the opened bundle; ``export_report.json`` inside it holds the figures (see ``report_table``).
    """
    backends = parse_formats(formats)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise ConfigError(f"{ckpt}: no such checkpoint file")
    dest = Path(out) if out is not None else _default_out(ckpt, precision)
    steps = _Steps(progress)

    with BundleWriter(dest, overwrite=overwrite) as writer, \
            tempfile.TemporaryDirectory(prefix="edgesplit-export-") as tmp:
        try:
            return _export(ckpt, dest, writer, Path(tmp), backends=backends, precision=precision, calib=calib,
                           calib_images=calib_images, verify=verify, steps=steps, name=name, threads=threads,
                           tolerances=tolerances, label_names=label_names)
        except EdgesplitError:
            raise
        except Exception as exc:  # noqa: BLE001 - a foreign failure (torch, onnx, a plugin) ends the export
            raise ExportError(f"exporting {ckpt.name} failed: {type(exc).__name__}: {exc}") from exc


def _export(ckpt: Path, dest: Path, writer: BundleWriter, scratch: Path, *, backends: list[str], precision: str,
            calib: str | Path | None, calib_images: int, verify: bool, steps: _Steps, name: str | None,
            threads: int | None, tolerances: Mapping[str, float] | None,
            label_names: Mapping[str, str] | None = None) -> Bundle:
    from edgesplit.train.checkpoint import load

    from . import _binary, _onnxruntime, _openvino
    from . import tensorrt as trt_export
    from ._graphs import OPSET, exact_nodes, export_onnx, graph_specs, has_own_qdq, io_spec, is_split, split_codec

    with steps.step("load"):
        model = load(ckpt)
        info = model.edgesplit_info
        spec = Preprocess.from_dict(info["preprocess"])
        labels = [str(v) for v in info["labels"]]
        split = is_split(model)
        kind = "split" if split else "full"
        n_binary = _binary.binary_layer_count(model)  # > 0: its own graphs (binary layers stay 1-bit)
    if n_binary:
        _binary.check_exportable(ckpt.name, n_binary, precision, split)
    tol = dict(TOLERANCES["binary" if n_binary else precision])  # see TOLERANCES for why 1-bit models differ
    tol.update(tolerances or {})
    binary_net = _binary.lowered(model) if n_binary else None  # every binary artifact is written from it
    binary_weights = _binary.weight_bytes(binary_net) if binary_net is not None else None
    steps.say(f"loaded {ckpt.name}: {kind} model {info['model'].get('name', '?')!r}, {len(labels)} labels, "
              f"input {spec.size}x{spec.size}" + (f", {n_binary} binary layers" if n_binary else ""))

    with steps.step("calibration"):
        cal = calibration_images(calib, spec, labels, calib_images)
        ref = _reference(model, spec, cal, split)
    steps.say(f"calibration: {cal.describe()}" + (f", torch top-1 {ref.accuracy:.3f}" if ref.accuracy is not None
                                                  else ""))

    # -- torch -> ONNX (fp32: the source of every other artifact) -------------------------------------------------
    with steps.step("onnx"):
        if binary_net is not None:  # built from the lowered arrays, not traced: binary layers become INT8 Q/DQ
            parts, inputs = ["model"], {"model": "image"}
            fp32_path = {"model": scratch / "model.fp32.onnx"}
            fp32_model = {"model": _binary.write_onnx(binary_net, spec, fp32_path["model"])}
        else:
            specs = graph_specs(model, spec)
            parts = [g.part for g in specs]
            inputs = {g.part: g.input_name for g in specs}
            fp32_path = {g.part: scratch / f"{g.part}.fp32.onnx" for g in specs}
            fp32_model = {g.part: export_onnx(g, fp32_path[g.part]) for g in specs}
    steps.say(f"{'binary student' if n_binary else 'torch'} -> ONNX (opset {OPSET}, dynamic batch): "
              f"{', '.join(p + '.onnx' for p in parts)}" + ("" if n_binary else _folding_text(specs)))
    own_qdq = not n_binary and any(has_own_qdq(m) for m in fp32_model.values())
    if own_qdq and precision != "int8":
        raise ConfigError(f"{ckpt.name}: the model exports its own int8 quantizers (Q/DQ); export it with "
                          "--precision int8")
    if own_qdq:  # every graph below starts from these files: int8 weights for onnxruntime, TensorRT and OpenVINO
        with steps.step("fold weight quantizers"):
            folded = _fold_weights(fp32_model, fp32_path)
        steps.say(folded)

    # calibration inputs per part: images, or torch's symbols for the decoder
    part_data = {p: ref.images for p in parts}
    if ref.symbols is not None:
        part_data["decoder"] = ref.symbols

    def part_inputs(part: str) -> np.ndarray:
        return part_data[part]

    # -- ONNX at the bundle's precision: onnxruntime's graph, and the graph TensorRT builds its plan from -----------
    ort_onnx: dict[str, str] = {}  # part -> file in the bundle
    trt_onnx: dict[str, str] = {}
    if "onnxruntime" in backends or "tensorrt" in backends:
        with steps.step(f"onnx {precision}"):
            if precision == "int8" and not own_qdq:
                # onnxruntime's CPU kernels are fastest with uint8 activations (U8S8); TensorRT takes only
                # symmetric int8 (zero points 0), so it gets its own QDQ graph, kept next to its plan
                kept = set()
                for part in parts:
                    data = part_inputs(part)
                    batches = [data[i:i + _INT8_BATCH] for i in range(0, len(data), _INT8_BATCH)]
                    exact = exact_nodes(fp32_model[part], part)
                    kept.update(exact)
                    for backend, rel, symmetric in (("onnxruntime", f"{part}.onnx", False),
                                                    ("tensorrt", f"tensorrt/{part}.onnx", True)):
                        if backend in backends:
                            _onnxruntime.quantize_qdq(fp32_path[part], writer.path(rel), inputs[part], batches,
                                                      exact, symmetric=symmetric)
                            (ort_onnx if backend == "onnxruntime" else trt_onnx)[part] = rel
                what = f"int8 QDQ, {len(kept)} exact nodes kept float"
            else:
                source = fp32_path
                what = "as exported" + (" (the model's own Q/DQ)" if own_qdq else "")
                if n_binary:
                    what = f"{n_binary} binary layers as INT8 Q/DQ with values in {{-1,+1}}, the rest float32"
                if precision == "fp16":
                    source = {g.part: scratch / f"{g.part}.fp16.onnx" for g in specs}
                    for g in graph_specs(model, spec, half=True):
                        export_onnx(g, source[g.part])
                    what = "fp16 compute, float32 inputs and outputs"
                for part in parts:
                    if "onnxruntime" in backends:
                        ort_onnx[part] = f"{part}.onnx"
                        shutil.copyfile(source[part], writer.path(ort_onnx[part]))
                    if "tensorrt" in backends:
                        trt_onnx[part] = ort_onnx.get(part, f"tensorrt/{part}.onnx")
                        if trt_onnx[part] not in ort_onnx.values():
                            shutil.copyfile(source[part], writer.path(trt_onnx[part]))
        steps.say(f"ONNX {precision}: {what}")

    # -- TensorRT: operator support (no TensorRT needed), then availability, before the slow steps ------------------
    import onnx

    def trt_source(part: str) -> Path:
        """The graph TensorRT builds from, or would build from (onnxruntime's int8 graph has uint8 activations)."""
        if part in trt_onnx:
            return writer.path(trt_onnx[part])
        if part in ort_onnx and (precision != "int8" or own_qdq):
            return writer.path(ort_onnx[part])
        return fp32_path[part]

    trt_models = {p: onnx.load(str(trt_source(p))) for p in parts}
    trt_unsupported = {p: trt_export.unsupported_ops(m) for p, m in trt_models.items()}
    if "tensorrt" in backends:
        trt_export.check_tensorrt_ops(trt_models)
        trt_export.import_tensorrt()
        steps.say("TensorRT: every ONNX operator is supported by its parser")

    # -- OpenVINO IR ------------------------------------------------------------------------------------------------
    files: dict[str, dict[str, dict[str, str]]] = {p: {} for p in parts}
    if "onnxruntime" in backends:
        for p in parts:
            files[p]["onnxruntime"] = {"model": f"{p}.onnx"}
    if "openvino" in backends and binary_net is not None:
        with steps.step("openvino binary"):
            files["model"]["openvino"] = _binary.write_openvino(binary_net, spec, writer.path(_binary.OPENVINO_FILE))
        steps.say(f"OpenVINO: {_binary.OPENVINO_FILE} ({_size(binary_weights['packed'])} of packed sign bits for "
                  f"{n_binary} binary layers, {_size(binary_weights['fp32'])} as float32), built into a "
                  "BinaryConvolution graph at load time")
    elif "openvino" in backends:
        with steps.step(f"openvino {precision}"):
            for part in parts:
                ov_model = _openvino.convert(fp32_path[part])
                if precision == "int8" and not own_qdq:
                    data = part_inputs(part)
                    items = [data[i:i + 1] for i in range(len(data))]
                    ov_model = _openvino.quantize_int8(ov_model, items, inputs[part],
                                                       _openvino.exact_ops(ov_model, part))
                _openvino.save(ov_model, writer.path(f"openvino/{part}.xml"), compress_to_fp16=precision == "fp16")
                files[part]["openvino"] = {"model": f"openvino/{part}.xml", "weights": f"openvino/{part}.bin"}
        detail = {"fp32": "fp32", "fp16": "fp16-compressed weights",
                  "int8": "int8 from the model's own Q/DQ" if own_qdq else "int8, NNCF"}[precision]
        steps.say(f"OpenVINO IR: {', '.join(f'openvino/{p}.xml' for p in parts)} ({detail})")

    # -- TensorRT plans ---------------------------------------------------------------------------------------------
    trt_info: dict[str, Any] | None = None
    if "tensorrt" in backends:
        with steps.step("tensorrt"):
            cache = writer.path("tensorrt/timing.cache")
            previous = dest / "tensorrt" / "timing.cache"
            for part in parts:
                in_shape = tuple(io_spec(fp32_model[part])["inputs"][inputs[part]]["shape"])
                plan_info = trt_export.build_plan(
                    writer.path(trt_onnx[part]), writer.path(f"tensorrt/{part}.plan"), input_name=inputs[part],
                    input_shape=in_shape, timing_cache=cache,
                    previous_cache=cache if cache.is_file() else (previous if previous.is_file() else None))
                files[part]["tensorrt"] = {"model": f"tensorrt/{part}.plan", "onnx": trt_onnx[part]}
            trt_info = {"version": plan_info.tensorrt, "gpu": plan_info.gpu,
                        "batch": dict(zip(("min", "opt", "max"), plan_info.batch)),
                        "timing_cache": "tensorrt/timing.cache"}
        steps.say(f"TensorRT {trt_info['version']} plans for {trt_info['gpu']}: "
                  f"{', '.join(f'tensorrt/{p}.plan' for p in parts)}")

    # -- codec tables -----------------------------------------------------------------------------------------------
    codec_entry: dict[str, Any] | None = None
    if split:
        codec = split_codec(model)
        np.savez(writer.path("codec.npz"), **{k: np.asarray(v) for k, v in codec.to_arrays().items()})
        latent = [int(d) for d in ref.symbols.shape[1:]]  # type: ignore[union-attr]
        codec_entry = {"id": str(codec.codec_id), "file": "codec.npz", "latent_shape": latent}
        steps.say(f"codec tables: codec.npz ({codec.codec_id}, latent {'x'.join(map(str, latent))})")

    # -- parity and latency -----------------------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for backend in backends:
        with steps.step(f"parity {backend}"):
            runners = _runners(backend, writer, files, parts, threads)
            if runners is None:
                figures: dict[str, Any] = {}
                steps.say(f"parity {backend}: not measured (no CUDA device visible to torch here)")
            else:
                figures = measure(runners, ref)
                bad = failed_checks(precision, figures, tol)
                failures += [f"{backend}: {b}" for b in bad]
                verdict = f"  FAILED: {'; '.join(bad)}" if bad else ""
                steps.say(f"parity {backend}: {_parity_text(figures)}{verdict}")
        for part in parts:
            latency = None
            if runners is not None:
                sample = {inputs[part]: part_inputs(part)[:1]}
                latency = round(median_latency_ms(runners[part], sample), 4)
            rel = files[part][backend]
            row = {
                "format": _FORMAT_OF[backend], "backend": backend, "precision": precision, "part": part,
                "file": rel["model"], "bytes": _bytes(writer.path(rel[k]) for k in ("model", "weights") if k in rel),
                "device": "gpu" if backend == "tensorrt" else "cpu",
                "latency_ms_b1": latency, "parity": _part_figures(part, figures),
            }
            if n_binary:
                row["binary"] = _binary_row(backend, n_binary, None if runners is None else runners[part])
            rows.append(row)

    if failures and verify:
        raise ExportError(f"parity check failed for {ckpt.name} ({precision}, {cal.describe()}, batch 1 and 3): "
                          f"{'; '.join(failures)}. Nothing was written; re-export with --no-verify to keep the "
                          "bundle anyway, or with real --calib images if these were synthetic")

    # -- report and manifest ----------------------------------------------------------------------------------------
    report = {
        "checkpoint": ckpt.name, "bundle": dest.name, "kind": kind, "precision": precision, "opset": OPSET,
        "calibration": cal.describe(), "torch_accuracy": ref.accuracy, "verified": verify,
        "passed": not failures, "failures": failures, "tolerances": tol, "rows": rows,
        "tensorrt_unsupported_ops": trt_unsupported,
        "cpu": _cpu_name(), "threads": threads, "steps": steps.records,
    }
    if n_binary:
        report["binary"] = {"layers": n_binary, "int8_note": _binary.int8_note(), "openvino_builder": _binary.BUILDER,
                            "weights_bytes": binary_weights}
    writer.path(REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "name": name or ckpt.stem,
        "fingerprint": writer.fingerprint(),
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "shape": [-1, spec.size, spec.size, 3],
                  "preprocess": spec.to_dict()},
        "labels": labels,
        **_label_names(labels, label_names, info.get("label_names"), ckpt.name),
        "opset": OPSET,
        "precision": precision,
        **({"binary_layers": n_binary} if n_binary else {}),
        "versions": _versions(backends, precision),
        "source": {"checkpoint": ckpt.name, "sha256": sha256_file(ckpt), "model": info["model"]},
    }
    data_cfg = info.get("train_config", {}).get("data", {})
    if "val_fraction" in data_cfg:  # lets `edgesplit eval BUNDLE --split val` pick the images training held out
        manifest["train_split"] = {"val_fraction": data_cfg["val_fraction"], "seed": data_cfg.get("split_seed", 0)}
    if codec_entry is not None:
        manifest["codec"] = codec_entry
    manifest["io"] = {p: io_spec(fp32_model[p]) for p in parts}
    manifest["parts"] = files
    if "openvino" in backends:
        manifest["runtime"] = {"openvino": {"INFERENCE_PRECISION_HINT": _openvino.INFERENCE_PRECISION}}
    if trt_info is not None:
        manifest["tensorrt"] = trt_info
    bundle = writer.commit(manifest)
    status = "parity checks passed" if not failures else "parity checks FAILED, kept because verify=False"
    steps.say(f"bundle {dest} (fingerprint {bundle.manifest['fingerprint']}, {status})")
    return bundle


def _label_names(labels: list[str], given: Mapping[str, str] | None, carried: Any, source: str) -> dict[str, Any]:
    """The manifest's ``label_names`` entry: the names given to the export, else the checkpoint's; none if neither
    names any class."""
    from edgesplit.labels import check_names, names_for

    names = check_names(labels, given, source) if given else names_for(labels, None, carried)
    return {"label_names": names} if names != labels else {}


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
            f"({', '.join(p.name.replace('.fp32', '') for p in paths.values())}: {_size(before)} -> "
            f"{_size(_bytes(paths.values()))})")


def _runners(backend: str, writer: BundleWriter, files: Mapping[str, Mapping[str, Mapping[str, str]]],
             parts: list[str], threads: int | None) -> dict[str, Any] | None:
    from . import _onnxruntime, _openvino

    if backend == "onnxruntime":
        return {p: _onnxruntime.OrtRunner(writer.path(files[p][backend]["model"]), threads) for p in parts}
    if backend == "openvino" and any("builder" in files[p][backend] for p in parts):
        # a graph built at load time: check it through the runtime's own session, the code a device runs
        from edgesplit.runtime.backends import open_session

        return {p: open_session(backend, writer.path(files[p][backend]["model"]), "cpu", threads,
                                options={"INFERENCE_PRECISION_HINT": _openvino.INFERENCE_PRECISION},
                                builder=files[p][backend].get("builder")) for p in parts}
    if backend == "openvino":
        return {p: _openvino.OvRunner(writer.path(files[p][backend]["model"]), threads) for p in parts}
    from .tensorrt import PlanRunner

    try:
        return {p: PlanRunner(writer.path(files[p][backend]["model"])) for p in parts}
    except BackendUnavailable:
        return None


def _binary_row(backend: str, layers: int, runner: Any) -> dict[str, Any]:
    """How a backend runs a binary student's 1-bit layers: OpenVINO's count is read from its compiled graph."""
    if backend != "openvino":
        return {"layers": layers, "runs_as": "INT8 Q/DQ"}
    return {"layers": layers, "runs_as": "BinaryConvolution",
            "binary_convolutions": getattr(runner, "binary_convolutions", None)}


def _binary_text(info: Mapping[str, Any] | None) -> str:
    if not info:
        return ""
    if info.get("runs_as") == "BinaryConvolution":
        count = info.get("binary_convolutions")
        return f"{'?' if count is None else count}/{info['layers']} as BinaryConvolution"
    return f"{info['layers']} as {info['runs_as']}"


def _part_figures(part: str, figures: Mapping[str, Any]) -> dict[str, Any]:
    """The figures that belong to one part's row (the encoder: symbols; decoder and model: logits)."""
    if not figures:
        return {}
    keys = ("symbol_agreement", "symbols_differing") if part == "encoder" else (
        "max_abs_logits", "logits_match_fraction", "top1_agreement", "accuracy", "accuracy_drop")
    return {k: figures[k] for k in keys if k in figures}


def _parity_text(fig: Mapping[str, Any]) -> str:
    bits = []
    if "symbol_agreement" in fig:
        bits.append(f"symbols {100 * fig['symbol_agreement']:.3f}% equal")
    if "max_abs_logits" in fig:
        bits.append(f"max|dlogits| {fig['max_abs_logits']:.2e}")
    if fig.get("logits_match_fraction", 1.0) < 1.0:
        bits.append(f"logits within {MATCH_ATOL:g} on {100 * fig['logits_match_fraction']:.0f}% of images")
    if "top1_agreement" in fig:
        bits.append(f"top-1 {100 * fig['top1_agreement']:.1f}% agree")
    if fig.get("accuracy") is not None:
        bits.append(f"acc {fig['accuracy']:.3f} (drop {fig['accuracy_drop']:+.3f})")
    return ", ".join(bits) if bits else "not measured"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def report_table(report: Mapping[str, Any]) -> str:
    """The report as a fixed-width table (what ``edgesplit export`` prints)."""
    binary = any("binary" in r for r in report["rows"])
    header: tuple[str, ...] = ("format", "precision", "part", "file", "size", "parity", "latency b1")
    if binary:
        header += ("binary layers",)
    lines = [header]
    for r in report["rows"]:
        latency = f"{r['latency_ms_b1']:.3f} ms" if r.get("latency_ms_b1") is not None else "n/a"
        if r.get("device") == "gpu" and r.get("latency_ms_b1") is not None:
            latency += " (GPU)"
        line: tuple[str, ...] = (r["format"], r["precision"], r["part"], r["file"], _size(int(r["bytes"])),
                                 _parity_text(r["parity"]), latency)
        lines.append(line + ((_binary_text(r.get("binary")),) if binary else ()))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    status = "passed" if report.get("passed") else "FAILED (bundle kept: --no-verify)"
    out.append(f"parity on {report['calibration']}, batch 1 and 3: {status}; latency: median at batch 1 on "
               f"{report.get('cpu') or 'this CPU'}" + (f", {report['threads']} thread(s)" if report.get("threads")
                                                        else ""))
    if any(r.get("binary", {}).get("runs_as") == "INT8 Q/DQ" for r in report["rows"]):
        out.append(f"onnx and tensorrt: {report['binary']['int8_note']}")
    return "\n".join(out)
