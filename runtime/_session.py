"""The session every first-party backend returns: inputs checked by name before the runtime sees them, and a
failure while running raised as ``InferenceError`` naming the backend, the graph file and the cause.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgesplit._checks import positive_int
from edgesplit.errors import BackendUnavailable, EdgesplitError, InferenceError

__all__ = ["Shape", "Session", "missing_backend", "check_threads", "split_device"]

Shape = tuple[int | None, ...]  # None: a dynamic dim (batch)


def missing_backend(backend: str, exc: ImportError) -> BackendUnavailable:
    """The error for a runtime that is not installed, naming the extra that installs it."""
    return BackendUnavailable(f"backend {backend!r} is not installed ({exc}); install it with "
                              f"`pip install edgesplit[{backend}]`")


def check_threads(threads: int | None, backend: str) -> None:
    if threads is not None:
        positive_int(threads, f"backend {backend!r}: threads", hint=" (or None: the runtime's default)")


def split_device(device: str, backend: str) -> tuple[str, int | None]:
    """'cuda:1' -> ('cuda', 1); 'cpu' -> ('cpu', None)."""
    if not isinstance(device, str) or not device:
        raise BackendUnavailable(f"backend {backend!r}: device must be a name like 'cpu' or 'cuda:0', got {device!r}")
    kind, _, index = device.lower().partition(":")
    if index and not index.isdigit():
        raise BackendUnavailable(f"backend {backend!r}: device {device!r} has a bad index (expected e.g. 'cuda:0')")
    return kind, (int(index) if index else None)


class Session:
    """One graph opened by one backend on one device: the first-party ``edgesplit.interfaces.BackendSession``.

    ``run({name: array}) -> {name: array}``. Inputs are checked against the graph (names, dtype, rank, fixed dims)
    before the backend sees them; a wrong input, like any failure of the runtime while running, is an
    ``InferenceError`` naming the backend, the graph file and the input. ``device`` and ``threads`` are what the
    runtime reports it uses (``threads`` is None where the runtime chooses and does not say).
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
        """Run the graph on named inputs; returns every output by name (arrays the caller owns).

        Raises ``InferenceError`` for inputs that do not fit the graph and for any failure of the runtime.
        """
        checked = self._check_feeds(feeds)
        try:
            return self._run(checked)
        except EdgesplitError:
            raise
        except Exception as exc:  # noqa: BLE001 - a runtime's own exception becomes ours, with its cause kept
            shapes = ", ".join(f"{k}: {v.dtype} {v.shape}" for k, v in checked.items())
            raise self._failure(f"failed on inputs ({shapes}): {type(exc).__name__}: {exc}") from exc

    def _failure(self, what: str) -> InferenceError:
        return InferenceError(f"backend {self.backend!r} on {self.device!r} running {self.path.name}: {what}")

    def _check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise self._failure(f"inputs must be a mapping of input name to array, got {type(feeds).__name__}")
        missing = [n for n in self._inputs if n not in feeds]
        unknown = [n for n in feeds if n not in self._inputs]
        if missing or unknown:
            raise self._failure(f"inputs {sorted(map(str, feeds))} do not match the graph's inputs "
                                f"{self.input_names} (missing: {missing or 'none'}, unknown: {unknown or 'none'})")
        return {name: self._check_feed(name, dtype, shape, feeds[name])
                for name, (dtype, shape) in self._inputs.items()}

    def _check_feed(self, name: str, dtype: np.dtype, shape: Shape, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise self._failure(f"input {name!r} must be a numpy array, got {type(value).__name__}")
        if value.dtype != dtype:
            raise self._failure(f"input {name!r} must have dtype {dtype}, got {value.dtype}")
        if value.ndim != len(shape) or any(d is not None and d != v for d, v in zip(shape, value.shape)):
            spec = "x".join("N" if d is None else str(d) for d in shape)
            raise self._failure(f"input {name!r} must have shape {spec}, got {'x'.join(map(str, value.shape))}")
        if value.size == 0:
            raise self._failure(f"input {name!r} is empty (shape {value.shape})")
        return np.ascontiguousarray(value)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the runtime's resources (the session is unusable afterwards)."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
