"""Runtime backends (ONNX Runtime, OpenVINO, TensorRT) behind one session interface, registered as kind 'backend'.

``open_session(backend, path, device=..., threads=...)`` opens a graph on an explicitly named device and reports
what the runtime actually uses; nothing falls back silently. Runtimes are imported on first use, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from edgesplit.errors import BackendUnavailable, BundleError, PluginError
from edgesplit.interfaces import BackendSession
from edgesplit.registry import create, get

from . import _onnxruntime, _openvino, _tensorrt  # noqa: F401 - each registers its backend on import
from ._backend_names import BACKENDS
from ._session import Session

__all__ = ["BACKENDS", "BUILDERS", "Session", "open_session", "open_part"]

# graph builders per backend: a bundle part ``{builder: NAME, model: FILE}`` is built in memory from FILE
BUILDERS: dict[str, tuple[str, ...]] = {"openvino": _openvino.BUILDERS}


def _check_name(backend: Any) -> None:
    """An unknown name is a ``PluginError`` (with close matches); a non-name says what a name looks like."""
    if not isinstance(backend, str) or not backend:
        raise BackendUnavailable(f"backend must be a name such as {', '.join(BACKENDS)}, got {backend!r}")
    get("backend", backend)


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
    the file cannot be read as a model. The session's ``run`` raises ``InferenceError`` when running fails.
    ``options`` are backend-specific (ONNX Runtime session config entries, OpenVINO compile properties).
    ``builder``: ``path`` is not a graph but what one of ``BUILDERS[backend]`` builds a graph from in memory.
    """
    _check_name(backend)
    _check_builder(backend, builder, str(path))
    # None-valued parameters are left out, so a third-party backend need take only what it uses
    session = create("backend", backend, path=Path(path), device=device, threads=threads, weights=weights,
                     options=options, builder=builder)
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
    _check_name(backend)  # an unknown name is a PluginError, not "not exported for that backend"
    model = bundle.file(part, backend, "model")
    entry = bundle.contents.parts[part][backend] or {}
    weights = bundle.file(part, backend, "weights") if "weights" in entry else None
    builder = entry.get("builder")  # checked by open_session
    recorded = (bundle.contents.runtime or {}).get(backend) or {}
    if not isinstance(recorded, Mapping):
        raise BundleError(f"{bundle.path}: manifest runtime.{backend} must map option names to values")
    return open_session(backend, model, device, threads, weights=weights, options={**recorded, **dict(options or {})},
                        builder=builder)
