"""Runtime backends (ONNX Runtime, OpenVINO, TensorRT) behind one session interface, registered as kind 'backend'.

``open_session(backend, path, device=..., threads=...)`` opens a graph on an explicitly named device and reports
what the runtime actually uses; nothing falls back silently. Runtimes are imported on first use, never at import.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgesplit.errors import BackendUnavailable, BundleError, ConfigError, DataError, EdgesplitError, PluginError
from edgesplit.interfaces import BackendSession
from edgesplit.registry import get, register

from . import binary_graph

__all__ = ["BACKENDS", "BUILDERS", "Session", "open_session", "open_part"]

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
# graph builders per backend: a bundle part ``{builder: NAME, model: FILE}`` is built in memory from FILE
BUILDERS: dict[str, tuple[str, ...]] = {"openvino": (binary_graph.BUILDER,)}
Shape = tuple[int | None, ...]  # None: a dynamic dim (batch)


def _install_hint(backend: str) -> str:
    return f"pip install edgesplit[{backend}]"


def _missing(backend: str, exc: ImportError) -> BackendUnavailable:
    return BackendUnavailable(f"backend {backend!r} is not installed ({exc}); install it with "
                              f"`{_install_hint(backend)}`")


def _check_threads(threads: int | None, backend: str) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"backend {backend!r}: threads must be a positive int or None (the runtime's default), "
                          f"got {threads!r}")


class Session:
    """One graph opened by one backend on one device: the first-party ``edgesplit.interfaces.BackendSession``.

    ``run({name: array}) -> {name: array}``. Inputs are checked against the graph (names, dtype, rank, fixed dims)
    before the backend sees them, so a wrong input is a ``DataError`` naming the input, not a runtime trace.
    ``device`` and ``threads`` are what the runtime reports it uses (``threads`` is None where the runtime
    chooses and does not say).
    """

    backend: str = ""

    def __init__(self, path: Path, *, device: str, threads: int | None, inputs: Mapping[str, tuple[np.dtype, Shape]],
                 outputs: Mapping[str, tuple[np.dtype, Shape]], max_batch: int | None = None) -> None:
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self.max_batch = max_batch  # the most images/payloads one run() takes (TensorRT profiles); None: no limit
        self._inputs = dict(inputs)
        self._outputs = dict(outputs)

    # -- description ------------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return {name: shape for name, (_, shape) in self._inputs.items()}

    @property
    def output_shapes(self) -> dict[str, Shape]:
        return {name: shape for name, (_, shape) in self._outputs.items()}

    @property
    def input_dtypes(self) -> dict[str, np.dtype]:
        return {name: dtype for name, (dtype, _) in self._inputs.items()}

    @property
    def output_dtypes(self) -> dict[str, np.dtype]:
        return {name: dtype for name, (dtype, _) in self._outputs.items()}

    def info(self) -> dict[str, Any]:
        """What the runtime reports it uses: backend, device, threads, and backend-specific details."""
        return {"backend": self.backend, "device": self.device, "threads": self.threads, **self._details()}

    def _details(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={str(self.path)!r}, device={self.device!r}, threads={self.threads}, "
                f"inputs={self.input_names}, outputs={self.output_names})")

    # -- running ----------------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the graph on named inputs; returns every output by name (arrays the caller owns)."""
        checked = self._check_feeds(feeds)
        try:
            return self._run(checked)
        except EdgesplitError:
            raise
        except Exception as exc:  # noqa: BLE001 - a runtime's own exception becomes ours, with its cause kept
            shapes = ", ".join(f"{k}: {v.dtype} {v.shape}" for k, v in checked.items())
            raise BackendUnavailable(f"backend {self.backend!r} on {self.device!r} failed running {self.path.name} "
                                     f"({shapes}): {type(exc).__name__}: {exc}") from exc

    def _check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise DataError(f"{self.path.name}: inputs must be a mapping {{name: array}}, got {type(feeds).__name__}")
        missing = [n for n in self._inputs if n not in feeds]
        unknown = [n for n in feeds if n not in self._inputs]
        if missing or unknown:
            raise DataError(f"{self.path.name}: inputs {sorted(feeds)} do not match the graph's inputs "
                            f"{self.input_names} (missing: {missing or 'none'}, unknown: {unknown or 'none'})")
        out = {}
        for name, (dtype, shape) in self._inputs.items():
            value = feeds[name]
            if not isinstance(value, np.ndarray):
                raise DataError(f"{self.path.name}: input {name!r} must be a numpy array, got {type(value).__name__}")
            if value.dtype != dtype:
                raise DataError(f"{self.path.name}: input {name!r} must have dtype {dtype}, got {value.dtype}")
            if value.ndim != len(shape) or any(d is not None and d != v for d, v in zip(shape, value.shape)):
                spec = "x".join("N" if d is None else str(d) for d in shape)
                raise DataError(f"{self.path.name}: input {name!r} must have shape {spec}, got "
                                f"{'x'.join(map(str, value.shape))}")
            if value.size == 0:
                raise DataError(f"{self.path.name}: input {name!r} is empty (shape {value.shape})")
            out[name] = np.ascontiguousarray(value)
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the runtime's resources (the session is unusable afterwards)."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------------------

_ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "rocm": "ROCMExecutionProvider",
                  "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider"}
_ORT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
               "tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(float16)": np.float16,
               "tensor(double)": np.float64, "tensor(bool)": np.bool_}


def _split_device(device: str, backend: str) -> tuple[str, int | None]:
    """'cuda:1' -> ('cuda', 1); 'cpu' -> ('cpu', None)."""
    if not isinstance(device, str) or not device:
        raise BackendUnavailable(f"backend {backend!r}: device must be a name like 'cpu' or 'cuda:0', got {device!r}")
    kind, _, index = device.lower().partition(":")
    if index and not index.isdigit():
        raise BackendUnavailable(f"backend {backend!r}: device {device!r} has a bad index (expected e.g. 'cuda:0')")
    return kind, (int(index) if index else None)


def _ort_dtype(type_name: str, where: str) -> np.dtype:
    dtype = _ORT_DTYPES.get(type_name)
    if dtype is None:
        raise BundleError(f"{where} has element type {type_name}, which edgesplit does not feed or read")
    return np.dtype(dtype)


def _ort_shape(shape: Any) -> Shape:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in (shape or ()))


class OnnxRuntimeSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise _missing("onnxruntime", exc) from exc
        _check_threads(threads, self.backend)
        kind, index = _split_device(device, self.backend)
        provider = _ORT_PROVIDERS.get(kind)
        if provider is None:
            raise BackendUnavailable(f"backend 'onnxruntime': unknown device {device!r}; "
                                     f"devices: {', '.join(_ORT_PROVIDERS)}")
        available = ort.get_available_providers()
        if provider not in available:
            raise BackendUnavailable(f"backend 'onnxruntime': device {device!r} needs {provider}, which this "
                                     f"onnxruntime build lacks (it has {', '.join(available)}); install the matching "
                                     "onnxruntime package (e.g. onnxruntime-gpu) or choose another device")
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        if threads is not None:
            session_options.intra_op_num_threads = threads
            session_options.inter_op_num_threads = 1
        if kind != "cpu":
            # Nodes the device cannot run would otherwise go to the CPU without a word.
            session_options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        for key, value in dict(options or {}).items():
            session_options.add_session_config_entry(str(key), str(value))
        provider_options = [{"device_id": str(index)}] if index is not None else None
        path = Path(path)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=session_options, providers=[provider],
                                                 provider_options=provider_options)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
            if not path.is_file():
                raise BundleError(f"{path}: no such model file") from exc
            if type(exc).__name__ in ("InvalidProtobuf", "InvalidGraph"):
                raise BundleError(f"{path}: not a valid ONNX model ({exc}); re-export the bundle") from exc
            raise BackendUnavailable(f"backend 'onnxruntime' cannot open {path} on {device!r}: {exc}") from exc
        used = self._session.get_providers()
        if not used or used[0] != provider:
            raise BackendUnavailable(f"backend 'onnxruntime': asked for {provider} on {device!r}, the session uses "
                                     f"{used} (the device failed to initialize; see onnxruntime's log)")
        self.providers = list(used)
        configured = self._session.get_session_options().intra_op_num_threads
        inputs = {i.name: (_ort_dtype(i.type, f"{path}: input {i.name!r}"), _ort_shape(i.shape))
                  for i in self._session.get_inputs()}
        outputs = {o.name: (_ort_dtype(o.type, f"{path}: output {o.name!r}"), _ort_shape(o.shape))
                   for o in self._session.get_outputs()}
        super().__init__(path, device=device.lower() if kind == "cpu" else f"{kind}:{index or 0}",
                         threads=configured or None, inputs=inputs, outputs=outputs)

    def _details(self) -> dict[str, Any]:
        return {"providers": self.providers}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]


@register("backend", "onnxruntime")
def onnxruntime_session(path: str | Path, *, device: str = "cpu", threads: int | None = None,
                        weights: str | Path | None = None, options: Mapping[str, Any] | None = None) -> Session:
    """ONNX Runtime. Devices: cpu, cuda[:N], rocm, coreml, dml (each needs its execution provider).

    ``options``: session config entries (``SessionOptions.add_session_config_entry``). ``weights`` is ignored:
    the bundle's ONNX files carry their weights inside.
    """
    return OnnxRuntimeSession(path, device=device, threads=threads, options=options)


# --------------------------------------------------------------------------------------------------------
# OpenVINO
# --------------------------------------------------------------------------------------------------------

def _ov_shape(partial: Any) -> Shape:
    return tuple(None if d.is_dynamic else int(d.get_length()) for d in partial)


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
            raise _missing("openvino", exc) from exc
        _check_threads(threads, self.backend)
        if not isinstance(device, str) or not device:
            raise BackendUnavailable(f"backend 'openvino': device must be a name like 'cpu' or 'gpu.0', got {device!r}")
        ov_device = device.upper()
        if ov_device.split(":")[0] in ("AUTO", "MULTI", "HETERO"):
            raise BackendUnavailable(f"backend 'openvino': device {device!r} lets OpenVINO pick devices itself; "
                                     "name one device (e.g. cpu, gpu, npu) so what runs is what you asked for")
        core = ov.Core()
        available = list(core.available_devices)
        if ov_device not in available and not (ov_device in ("GPU", "NPU") and f"{ov_device}.0" in available):
            raise BackendUnavailable(f"backend 'openvino': device {device!r} is not available here (available: "
                                     f"{', '.join(d.lower() for d in available) or 'none'})")
        path = Path(path)
        self.builder = builder
        if builder is not None:
            model = _built_model(path, builder, weights)
        else:
            try:
                model = core.read_model(str(path), None if weights is None else str(weights))
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
                if not path.is_file():
                    raise BundleError(f"{path}: no such model file") from exc
                raise BundleError(f"{path}: OpenVINO cannot read this model: {exc}") from exc
        # CPUs with bf16 units would otherwise run an fp32 graph in bf16 (OpenVINO's CPU default there).
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", **dict(options or {})}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(model, ov_device, config)
        except Exception as exc:  # noqa: BLE001
            raise BackendUnavailable(f"backend 'openvino' cannot compile {path.name} for {ov_device}: {exc}") from exc
        try:
            used_threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS")) or None
        except Exception:  # noqa: BLE001 - not every device plugin has a thread count
            used_threads = None
        try:
            used = [str(d) for d in self._compiled.get_property("EXECUTION_DEVICES")]
        except Exception:  # noqa: BLE001
            used = [ov_device]
        self.execution_devices = used
        try:
            hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
            self.inference_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        except Exception:  # noqa: BLE001
            self.inference_precision = None
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: its output tensors are reused between calls
        self._per_image = builder is not None  # compiled at batch 1 (see the class docstring)

        def shape(port: Any) -> Shape:
            dims = _ov_shape(port.get_partial_shape())
            return (None, *dims[1:]) if self._per_image and dims else dims

        inputs = {p.get_any_name(): (np.dtype(p.get_element_type().to_dtype()), shape(p))
                  for p in self._compiled.inputs}
        outputs = {p.get_any_name(): (np.dtype(p.get_element_type().to_dtype()), shape(p))
                   for p in self._compiled.outputs}
        self._output_ports = {p.get_any_name(): p for p in self._compiled.outputs}
        self.layer_types: dict[str, int] | None = None
        if builder is not None:  # what the plugin made of the graph: are the binary layers 1-bit kernels?
            self.layer_types = dict(binary_graph.binary_layer_types(self._compiled))
        super().__init__(path, device=",".join(d.lower() for d in used), threads=used_threads, inputs=inputs,
                         outputs=outputs)

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


def _built_model(path: Path, builder: str, weights: str | Path | None) -> Any:
    """The ``openvino.Model`` that graph builder ``builder`` makes from ``path``, reshaped to batch 1."""
    if builder != binary_graph.BUILDER:
        raise BundleError(f"{path}: graph builder {builder!r} is unknown to this edgesplit (it builds "
                          f"{', '.join(BUILDERS['openvino'])}); upgrade edgesplit or re-export the bundle")
    if weights is not None:
        raise BundleError(f"{path}: builder {builder!r} reads one file; a separate weights file is not expected")
    model = binary_graph.openvino_model_from_file(path)
    dims = list(model.input(0).get_partial_shape())
    model.reshape({model.input(0): [1, *(int(d.get_length()) for d in dims[1:])]})
    return model


@register("backend", "openvino")
def openvino_session(path: str | Path, *, device: str = "cpu", threads: int | None = None,
                     weights: str | Path | None = None, options: Mapping[str, Any] | None = None,
                     builder: str | None = None) -> Session:
    """OpenVINO. Devices: those in ``openvino.Core().available_devices`` (cpu, gpu, gpu.1, npu, ...).

    Runs in f32 unless ``options`` (compile properties) say otherwise, e.g. ``{"INFERENCE_PRECISION_HINT": "bf16"}``.
    ``builder``: build the graph in memory from ``path`` (``BUILDERS['openvino']``) instead of reading an IR.
    """
    return OpenVinoSession(path, device=device, threads=threads, weights=weights, options=options, builder=builder)


# --------------------------------------------------------------------------------------------------------
# TensorRT (11.x API; needs an NVIDIA GPU, tensorrt and cuda-python; not exercised by this repository's tests)
# --------------------------------------------------------------------------------------------------------

def _cuda_runtime() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError as exc:
            raise _missing("tensorrt", exc) from exc
    return cudart


def _cuda_check(result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:
        raise BackendUnavailable(f"backend 'tensorrt': CUDA call {what} failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRtSession(Session):
    """A deserialized TensorRT engine run with ``execute_async_v3``; device memory per call through cuda-python."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, *, device: str = "cuda", threads: int | None = None) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise _missing("tensorrt", exc) from exc
        cudart = _cuda_runtime()
        kind, index = _split_device(device, self.backend)
        if kind != "cuda":
            raise BackendUnavailable(f"backend 'tensorrt' runs on NVIDIA GPUs only; device {device!r} is not "
                                     "'cuda' or 'cuda:N'")
        if threads is not None:
            log.info("backend 'tensorrt' ignores threads=%s (it runs on the GPU)", threads)
        self._trt, self._cudart = trt, cudart
        count = _cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if (index or 0) >= int(count):
            raise BackendUnavailable(f"backend 'tensorrt': device {device!r} not found ({count} CUDA devices)")
        _cuda_check(cudart.cudaSetDevice(index or 0), "cudaSetDevice")
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: no such TensorRT plan")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise BackendUnavailable(f"{path}: TensorRT could not deserialize this plan (built for another TensorRT "
                                     "version or GPU? rebuild it on this machine with `edgesplit export`)")
        self._context = self._engine.create_execution_context()
        self._stream = _cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._lock = threading.Lock()
        inputs, outputs = {}, {}
        max_batch = None
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            shape = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(name))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs)[name] = (dtype, shape)
            if is_input and shape and shape[0] is None:  # dynamic batch: the profile's (min, opt, max) bound it
                top = int(self._engine.get_tensor_profile_shape(name, 0)[2][0])
                max_batch = top if max_batch is None else min(max_batch, top)
        super().__init__(path, device=f"cuda:{index or 0}", threads=None, inputs=inputs, outputs=outputs,
                         max_batch=max_batch)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        allocations = []
        with self._lock:
            try:
                for name, array in feeds.items():
                    if not self._context.set_input_shape(name, array.shape):
                        raise DataError(f"{self.path.name}: input {name!r} shape {array.shape} is outside the "
                                        "engine's optimization profile; re-export with a larger max batch")
                    ptr = _cuda_check(cudart.cudaMalloc(array.nbytes), "cudaMalloc")
                    allocations.append(ptr)
                    _cuda_check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self._stream),
                                "cudaMemcpyAsync")
                    self._context.set_tensor_address(name, int(ptr))
                results = {}
                for name in self.output_names:
                    shape = tuple(self._context.get_tensor_shape(name))
                    host = np.empty(shape, dtype=self.output_dtypes[name])
                    ptr = _cuda_check(cudart.cudaMalloc(max(host.nbytes, 1)), "cudaMalloc")
                    allocations.append(ptr)
                    self._context.set_tensor_address(name, int(ptr))
                    results[name] = (host, ptr)
                if not self._context.execute_async_v3(int(self._stream)):
                    raise BackendUnavailable(f"backend 'tensorrt': execute_async_v3 failed for {self.path.name}")
                for host, ptr in results.values():
                    _cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self._stream),
                                "cudaMemcpyAsync")
                _cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
                return {name: host for name, (host, _) in results.items()}
            finally:
                for ptr in allocations:
                    cudart.cudaFree(ptr)

    def close(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = self._runtime = None


@register("backend", "tensorrt")
def tensorrt_session(path: str | Path, *, device: str = "cuda", threads: int | None = None,
                     weights: str | Path | None = None, options: Mapping[str, Any] | None = None) -> Session:
    """TensorRT 11 (plans are specific to a GPU model and TensorRT version). Devices: cuda, cuda:N."""
    return TensorRtSession(path, device=device, threads=threads)


# --------------------------------------------------------------------------------------------------------

def _factory(backend: Any) -> Any:
    if not isinstance(backend, str) or not backend:
        raise BackendUnavailable(f"backend must be a name such as {', '.join(BACKENDS)}, got {backend!r}")
    return get("backend", backend)


def _check_builder(backend: str, builder: Any, where: str) -> None:
    if builder is not None and builder not in BUILDERS.get(backend, ()):
        known = ", ".join(BUILDERS.get(backend, ())) or "none"
        raise BundleError(f"{where}: graph builder {builder!r} is unknown for backend {backend!r} (this edgesplit "
                          f"builds: {known}); upgrade edgesplit or re-export the bundle")


def open_session(backend: str, path: str | Path, device: str = "cpu", threads: int | None = None, *,
                 weights: str | Path | None = None, options: Mapping[str, Any] | None = None,
                 builder: str | None = None) -> BackendSession:
    """Open graph ``path`` with ``backend`` (a registered name) on ``device``.

    Raises ``PluginError`` for an unknown backend name or a backend whose session is not a ``BackendSession``,
    ``BackendUnavailable`` when the backend or device is missing (with the extra to install), ``BundleError`` when
    the file cannot be read as a model.
    ``options`` are backend-specific (ONNX Runtime session config entries, OpenVINO compile properties).
    ``builder``: ``path`` is not a graph but what one of ``BUILDERS[backend]`` builds a graph from in memory.
    """
    factory = _factory(backend)
    _check_builder(backend, builder, str(path))
    extra = {} if builder is None else {"builder": builder}  # only builder-aware backends take the argument
    session = factory(Path(path), device=device, threads=threads, weights=weights, options=options, **extra)
    if not isinstance(session, BackendSession):
        raise PluginError(f"backend {backend!r} opened {path} as {type(session).__name__}, which is not an "
                          "edgesplit.interfaces.BackendSession (run, info, close, input_names, output_names, "
                          "input_shapes, output_shapes, backend, device, threads, max_batch); fix the backend plugin")
    return session


def open_part(bundle: Any, part: str, backend: str, device: str = "cpu", threads: int | None = None, *,
              options: Mapping[str, Any] | None = None) -> BackendSession:
    """Open ``part`` of an opened ``Bundle`` with ``backend``: its model file plus OpenVINO's weights if any, or
    the file its ``builder`` makes a graph from (``BUILDERS``; an unknown builder is a ``BundleError``).

    The bundle's ``runtime.<backend>`` options (what the exporter checked parity with) apply unless ``options``
    overrides them key by key.
    """
    _factory(backend)  # an unknown name is a PluginError, not "not exported for that backend"
    model = bundle.file(part, backend, "model")
    entry = bundle.manifest["parts"][part][backend] or {}
    weights = bundle.file(part, backend, "weights") if "weights" in entry else None
    builder = entry.get("builder")  # checked by open_session
    recorded = (bundle.manifest.get("runtime") or {}).get(backend) or {}
    if not isinstance(recorded, Mapping):
        raise BundleError(f"{bundle.path}: manifest runtime.{backend} must map option names to values")
    return open_session(backend, model, device, threads, weights=weights, options={**recorded, **dict(options or {})},
                        builder=builder)
