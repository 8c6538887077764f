"""ONNX Runtime backend: one ``InferenceSession`` on the execution provider the device names, never another."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgesplit.errors import BackendUnavailable, BundleError
from edgesplit.registry import register

from ._session import Session, Shape, check_threads, missing_backend, split_device

__all__ = ["OnnxRuntimeSession", "onnxruntime_session"]

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "rocm": "ROCMExecutionProvider",
              "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider"}
_DTYPES = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
           "tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(float16)": np.float16,
           "tensor(double)": np.float64, "tensor(bool)": np.bool_}


def _dtype(type_name: str, where: str) -> np.dtype:
    dtype = _DTYPES.get(type_name)
    if dtype is None:
        raise BundleError(f"{where} has element type {type_name}, which edgesplit does not feed or read")
    return np.dtype(dtype)


def _shape(shape: Any) -> Shape:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in (shape or ()))


def _provider(ort: Any, device: str, kind: str) -> str:
    """The execution provider ``device`` names, present in this onnxruntime build."""
    provider = _PROVIDERS.get(kind)
    if provider is None:
        raise BackendUnavailable(f"backend 'onnxruntime': unknown device {device!r}; devices: {', '.join(_PROVIDERS)}")
    available = ort.get_available_providers()
    if provider not in available:
        raise BackendUnavailable(f"backend 'onnxruntime': device {device!r} needs {provider}, which this "
                                 f"onnxruntime build lacks (it has {', '.join(available)}); install the matching "
                                 "onnxruntime package (e.g. onnxruntime-gpu) or choose another device")
    return provider


def _session_options(ort: Any, kind: str, threads: int | None, options: Mapping[str, Any] | None) -> Any:
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
    return session_options


class OnnxRuntimeSession(Session):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise missing_backend("onnxruntime", exc) from exc
        check_threads(threads, self.backend)
        kind, index = split_device(device, self.backend)
        provider = _provider(ort, device, kind)
        provider_options = [{"device_id": str(index)}] if index is not None else None
        path = Path(path)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=_session_options(ort, kind, threads, options),
                                                 providers=[provider], provider_options=provider_options)
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
        inputs = {i.name: (_dtype(i.type, f"{path}: input {i.name!r}"), _shape(i.shape))
                  for i in self._session.get_inputs()}
        outputs = {o.name: (_dtype(o.type, f"{path}: output {o.name!r}"), _shape(o.shape))
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
