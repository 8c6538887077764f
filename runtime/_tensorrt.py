"""TensorRT backend (11.x API): a deserialized engine run with ``execute_async_v3``, device memory per call through
cuda-python. Needs an NVIDIA GPU; this repository's CPU tests check only its messages without TensorRT.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from edgesplit.errors import BackendUnavailable, BundleError, EdgesplitError
from edgesplit.registry import register

from ._session import Session, Shape, missing_backend, split_device

__all__ = ["TensorRtSession", "tensorrt_session"]

log = logging.getLogger(__name__)


def _cuda_runtime() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError as exc:
            raise missing_backend("tensorrt", exc) from exc
    return cudart


def _cuda_check(result: Any, what: str,
                error: Callable[[str], EdgesplitError] = BackendUnavailable) -> Any:
    """The value of a cuda-python call; a non-zero status raises ``error`` (opening: ``BackendUnavailable``)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:
        raise error(f"backend 'tensorrt': CUDA call {what} failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


def _select_gpu(cudart: Any, device: str) -> int:
    """The CUDA device index that ``device`` ('cuda' or 'cuda:N') names, made current."""
    kind, index = split_device(device, "tensorrt")
    if kind != "cuda":
        raise BackendUnavailable(f"backend 'tensorrt' runs on NVIDIA GPUs only; device {device!r} is not "
                                 "'cuda' or 'cuda:N'")
    count = _cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if (index or 0) >= int(count):
        raise BackendUnavailable(f"backend 'tensorrt': device {device!r} not found ({count} CUDA devices)")
    _cuda_check(cudart.cudaSetDevice(index or 0), "cudaSetDevice")
    return index or 0


def _io_tensors(trt: Any, engine: Any) -> tuple[dict[str, tuple[np.dtype, Shape]], dict[str, tuple[np.dtype, Shape]],
                                                 int | None]:
    """(inputs, outputs, max batch): each I/O tensor's dtype and shape; the batch bound of dynamic-batch inputs
    from the optimization profile's (min, opt, max)."""
    inputs, outputs = {}, {}
    max_batch = None
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs)[name] = (dtype, shape)
        if is_input and shape and shape[0] is None:
            top = int(engine.get_tensor_profile_shape(name, 0)[2][0])
            max_batch = top if max_batch is None else min(max_batch, top)
    return inputs, outputs, max_batch


class TensorRtSession(Session):
    """A deserialized TensorRT engine run with ``execute_async_v3``; device memory per call through cuda-python."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, *, device: str = "cuda", threads: int | None = None) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise missing_backend("tensorrt", exc) from exc
        cudart = _cuda_runtime()
        if threads is not None:
            log.info("backend 'tensorrt' ignores threads=%s (it runs on the GPU)", threads)
        self._trt, self._cudart = trt, cudart
        index = _select_gpu(cudart, device)
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
        inputs, outputs, max_batch = _io_tensors(trt, self._engine)
        super().__init__(path, device=f"cuda:{index}", threads=None, inputs=inputs, outputs=outputs,
                         max_batch=max_batch)

    def _check(self, result: Any, what: str) -> Any:
        return _cuda_check(result, what, self._failure)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        allocations: list[Any] = []
        with self._lock:
            try:
                for name, array in feeds.items():
                    if not self._context.set_input_shape(name, array.shape):
                        raise self._failure(f"input {name!r} shape {array.shape} is outside the engine's "
                                            "optimization profile; re-export with a larger max batch")
                    ptr = self._device_buffer(array.nbytes, allocations)
                    self._check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes,
                                                       cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream),
                                "cudaMemcpyAsync")
                    self._context.set_tensor_address(name, int(ptr))
                results = {}
                for name in self.output_names:
                    host = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=self.output_dtypes[name])
                    ptr = self._device_buffer(max(host.nbytes, 1), allocations)
                    self._context.set_tensor_address(name, int(ptr))
                    results[name] = (host, ptr)
                if not self._context.execute_async_v3(int(self._stream)):
                    raise self._failure("execute_async_v3 failed (see TensorRT's log)")
                for host, ptr in results.values():
                    self._check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes,
                                                       cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream),
                                "cudaMemcpyAsync")
                self._check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
                return {name: host for name, (host, _) in results.items()}
            finally:
                for ptr in allocations:
                    cudart.cudaFree(ptr)

    def _device_buffer(self, nbytes: int, allocations: list[Any]) -> Any:
        ptr = self._check(self._cudart.cudaMalloc(nbytes), "cudaMalloc")
        allocations.append(ptr)
        return ptr

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
