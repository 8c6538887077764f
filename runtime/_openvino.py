"""OpenVINO backend: an IR compiled for one named device, or a graph built in memory (a 1-bit student's file)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgesplit.errors import BackendUnavailable, BundleError
from edgesplit.registry import register

from . import binary_graph
from ._session import Session, Shape, check_threads, missing_backend

__all__ = ["BUILDERS", "OpenVinoSession", "openvino_session"]

# graph builders: a bundle part ``{builder: NAME, model: FILE}`` is built in memory from FILE
BUILDERS: tuple[str, ...] = (binary_graph.BUILDER,)


def _shape(partial: Any) -> Shape:
    return tuple(None if d.is_dynamic else int(d.get_length()) for d in partial)


def _device(core: Any, device: str) -> str:
    """OpenVINO's name of ``device`` (upper case), which must be one device this machine has."""
    if not isinstance(device, str) or not device:
        raise BackendUnavailable(f"backend 'openvino': device must be a name like 'cpu' or 'gpu.0', got {device!r}")
    ov_device = device.upper()
    if ov_device.split(":")[0] in ("AUTO", "MULTI", "HETERO"):
        raise BackendUnavailable(f"backend 'openvino': device {device!r} lets OpenVINO pick devices itself; "
                                 "name one device (e.g. cpu, gpu, npu) so what runs is what you asked for")
    available = list(core.available_devices)
    if ov_device not in available and not (ov_device in ("GPU", "NPU") and f"{ov_device}.0" in available):
        raise BackendUnavailable(f"backend 'openvino': device {device!r} is not available here (available: "
                                 f"{', '.join(d.lower() for d in available) or 'none'})")
    return ov_device


def _read_model(core: Any, path: Path, weights: str | Path | None, builder: str | None) -> Any:
    if builder is not None:
        return _built_model(path, builder, weights)
    try:
        return core.read_model(str(path), None if weights is None else str(weights))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
        if not path.is_file():
            raise BundleError(f"{path}: no such model file") from exc
        raise BundleError(f"{path}: OpenVINO cannot read this model: {exc}") from exc


def _built_model(path: Path, builder: str, weights: str | Path | None) -> Any:
    """The ``openvino.Model`` that graph builder ``builder`` makes from ``path``, reshaped to batch 1."""
    if builder != binary_graph.BUILDER:
        raise BundleError(f"{path}: graph builder {builder!r} is unknown to this edgesplit (it builds "
                          f"{', '.join(BUILDERS)}); upgrade edgesplit or re-export the bundle")
    if weights is not None:
        raise BundleError(f"{path}: builder {builder!r} reads one file; a separate weights file is not expected")
    model = binary_graph.openvino_model_from_file(path)
    dims = list(model.input(0).get_partial_shape())
    model.reshape({model.input(0): [1, *(int(d.get_length()) for d in dims[1:])]})
    return model


def _property(compiled: Any, name: str) -> Any:
    """A compiled model's property, or None where the device plugin does not have it."""
    try:
        return compiled.get_property(name)
    except Exception:  # noqa: BLE001 - not every device plugin has every property
        return None


class OpenVinoSession(Session):
    """An OpenVINO IR (``path`` + ``weights``), or with ``builder`` a graph built in memory from ``path``.

    Builder ``binary-v1`` (``binary_graph``): a 1-bit student's packed file becomes a graph whose binary convolutions
    run as ``BinaryConvolution``. That kernel has no dynamic-shape version on OpenVINO 2026.4's CPU plugin ("Doesn't
    support op with dynamic shapes"), so the graph is compiled at batch 1 and a batch runs image by image: callers
    still see a dynamic batch, one compile serves every batch size, and on CPU a Bi-Real-18 at batch 1 x 32 was
    measured no slower than one compile at batch 32.
    """

    backend = "openvino"

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 weights: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 builder: str | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise missing_backend("openvino", exc) from exc
        check_threads(threads, self.backend)
        core = ov.Core()
        ov_device = _device(core, device)
        path = Path(path)
        self.builder = builder
        model = _read_model(core, path, weights, builder)
        # CPUs with bf16 units would otherwise run an fp32 graph in bf16 (OpenVINO's CPU default there).
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", **dict(options or {})}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(model, ov_device, config)
            self._request = self._compiled.create_infer_request()
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
            raise BackendUnavailable(f"backend 'openvino' cannot compile {path.name} for {ov_device}: {exc}") from exc
        used_threads = int(_property(self._compiled, "INFERENCE_NUM_THREADS") or 0) or None
        used = [str(d) for d in _property(self._compiled, "EXECUTION_DEVICES") or [ov_device]]
        self.execution_devices = used
        hint = _property(self._compiled, "INFERENCE_PRECISION_HINT")
        self.inference_precision = (None if hint is None else
                                    hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint))
        self._lock = threading.Lock()  # one infer request: its output tensors are reused between calls
        self._per_image = builder is not None  # compiled at batch 1 (see the class docstring)
        self._output_ports = {p.get_any_name(): p for p in self._compiled.outputs}
        self.layer_types: dict[str, int] | None = None
        if builder is not None:  # what the plugin made of the graph: are the binary layers 1-bit kernels?
            self.layer_types = dict(binary_graph.binary_layer_types(self._compiled))
        super().__init__(path, device=",".join(d.lower() for d in used), threads=used_threads,
                         inputs=self._ports(self._compiled.inputs), outputs=self._ports(self._compiled.outputs))

    def _ports(self, ports: Any) -> dict[str, tuple[np.dtype, Shape]]:
        """Name -> (dtype, shape) of compiled ports; a graph compiled at batch 1 shows a dynamic batch."""
        described = {}
        for port in ports:
            dims = _shape(port.get_partial_shape())
            shape = (None, *dims[1:]) if self._per_image and dims else dims
            described[port.get_any_name()] = (np.dtype(port.get_element_type().to_dtype()), shape)
        return described

    @property
    def binary_convolutions(self) -> int | None:
        """How many ``BinaryConvolution`` nodes the compiled graph runs (None: not a built binary graph)."""
        return None if self.layer_types is None else int(self.layer_types.get("BinaryConvolution", 0))

    def _details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"execution_devices": self.execution_devices,
                                   "inference_precision": self.inference_precision}
        if self.builder is not None:
            details.update(builder=self.builder, binary_convolutions=self.binary_convolutions)
        return details

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer(feeds)
        return {name: np.array(result[port], copy=True) for name, port in self._output_ports.items()}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if not self._per_image:
                return self._infer(feeds)
            n = len(next(iter(feeds.values())))
            rows = [self._infer({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
            return {name: np.concatenate([r[name] for r in rows]) for name in self._output_ports}

    def close(self) -> None:
        self._request = None
        self._compiled = None


@register("backend", "openvino")
def openvino_session(path: str | Path, *, device: str = "cpu", threads: int | None = None,
                     weights: str | Path | None = None, options: Mapping[str, Any] | None = None,
                     builder: str | None = None) -> Session:
    """OpenVINO. Devices: those in ``openvino.Core().available_devices`` (cpu, gpu, gpu.1, npu, ...).

    Runs in f32 unless ``options`` (compile properties) say otherwise, e.g. ``{"INFERENCE_PRECISION_HINT": "bf16"}``.
    ``builder``: build the graph in memory from ``path`` (``BUILDERS``) instead of reading an IR.
    """
    return OpenVinoSession(path, device=device, threads=threads, weights=weights, options=options, builder=builder)
