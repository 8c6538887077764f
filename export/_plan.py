"""The export plan (what one ``export_checkpoint`` call builds, decided before any slow step), the artifacts its
stages write, and the progress/timing record every stage reports to."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from edgesplit.errors import ConfigError, ExportError
from edgesplit.preprocess import Preprocess
from edgesplit.registry import create
from edgesplit.runtime.backends import BACKENDS

from ._calibration import Calibration
from ._parity import TOLERANCES, Reference

__all__ = ["ExportPlan", "Artifacts", "Steps", "make_plan", "PRECISIONS", "BACKENDS", "FORMATS", "FORMAT_OF"]

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
# the export targets are the runtime's backends; FORMATS maps the older --format names onto them, and FORMAT_OF
# gives the name the report's ``format`` key has always carried
FORMATS: dict[str, str] = {"onnx": "onnxruntime", **{b: b for b in BACKENDS if b != "onnxruntime"}}
FORMAT_OF: dict[str, str] = {backend: name for name, backend in FORMATS.items()}
BINARY_PRECISIONS = ("fp32",)


class Steps:
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


@dataclass
class ExportPlan:
    """One export: the loaded model and everything decided about it before the first graph is written."""

    checkpoint: Path
    dest: Path
    backends: list[str]
    precision: str
    model: Any
    info: dict[str, Any]
    spec: Preprocess
    labels: list[str]
    kind: str  # "split" or "full"
    binary_layers: int  # > 0: a binary student (its own graphs; binary layers stay 1-bit)
    tolerances: dict[str, float]
    calib: str | Path | None = None
    calib_images: int = 64
    verify: bool = True
    threads: int | None = None
    name: str | None = None
    label_names: Mapping[str, str] | None = None
    binary_net: Any = None  # the lowered arrays of a binary student (every binary artifact is written from them)

    @property
    def split(self) -> bool:
        return self.kind == "split"

    def wants(self, backend: str) -> bool:
        return backend in self.backends


@dataclass
class Artifacts:
    """What the stages have produced so far (paths relative to the bundle unless they are scratch paths)."""

    cal: Calibration | None = None
    ref: Reference | None = None
    parts: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # part -> graph input name
    specs: list[Any] = field(default_factory=list)  # torch graphs (``_graphs.GraphSpec``); none for binary students
    fp32_path: dict[str, Path] = field(default_factory=dict)  # scratch fp32 ONNX per part: the source of the rest
    fp32_model: dict[str, Any] = field(default_factory=dict)
    own_qdq: bool = False  # the model exported its own Q/DQ (a QAT student)
    ort_onnx: dict[str, str] = field(default_factory=dict)  # part -> onnxruntime's graph in the bundle
    trt_onnx: dict[str, str] = field(default_factory=dict)  # part -> the graph TensorRT builds its plan from
    files: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # the manifest's parts entry
    trt_unsupported: dict[str, list[str]] = field(default_factory=dict)
    trt_info: dict[str, Any] | None = None
    codec_entry: dict[str, Any] | None = None

    def part_inputs(self, part: str) -> np.ndarray:
        """Calibration inputs of a part: the images, or torch's symbols for the decoder."""
        assert self.ref is not None, "calibrate first"
        if part == "decoder" and self.ref.symbols is not None:
            return self.ref.symbols
        return self.ref.images


def binary_hook() -> Any:
    """The binary students' exporter hook (``create("exporter", "binary")``, registered by the quant plugin)."""
    return create("exporter", "binary")


def _check_binary(name: str, layers: int, precision: str, split: bool) -> None:
    """Refuse what the binary path cannot export, before any slow step."""
    if split:
        raise ExportError(f"{name}: split students with binary layers are not exported yet ({layers} binary layers "
                          "found); export a full binary student (student 'binary')")
    if precision not in BINARY_PRECISIONS:
        raise ConfigError(
            f"{name}: a binary student ({layers} binary layers) exports with --precision fp32 only, meaning: binary "
            "layers at 1 bit (OpenVINO BinaryConvolution; INT8 Q/DQ on onnxruntime/TensorRT), the stem, shortcuts "
            f"and head in float32. --precision {precision} would requantize the float layers that feed the binary "
            "thresholds (and int8 quantizers would break the FakeQuantize -> binary convolution pairs OpenVINO "
            "fuses); export with --precision fp32")


def make_plan(ckpt: Path, dest: Path, backends: list[str], precision: str, *,
              tolerances: Mapping[str, float] | None, **options: Any) -> ExportPlan:
    """Load the checkpoint and decide the export (``options``: the remaining ``ExportPlan`` fields)."""
    from edgesplit.train.checkpoint import load

    from ._graphs import is_split

    model = load(ckpt)
    info = model.edgesplit_info
    kind = "split" if is_split(model) else "full"
    hook = binary_hook()
    layers = hook.layer_count(model)
    if layers:
        _check_binary(ckpt.name, layers, precision, kind == "split")
    tol = dict(TOLERANCES["binary" if layers else precision])  # see TOLERANCES for why 1-bit models differ
    tol.update(tolerances or {})
    return ExportPlan(
        checkpoint=ckpt, dest=dest, backends=backends, precision=precision, model=model, info=info,
        spec=Preprocess.from_dict(info["preprocess"]), labels=[str(v) for v in info["labels"]], kind=kind,
        binary_layers=layers, tolerances=tol, binary_net=hook.lower(model) if layers else None, **options)
