"""The parity stage: the staged bundle's graphs opened through the runtime's own sessions (``open_part``, with the
options the manifest records and the export's threads), measured against torch, as the report's rows."""

from __future__ import annotations

from typing import Any

from edgesplit.bundle import Bundle
from edgesplit.errors import BackendUnavailable
from edgesplit.interfaces import BackendSession

from ._parity import failed_checks, measure, median_latency_ms
from ._plan import FORMAT_OF, Artifacts, ExportPlan, Steps
from ._report import parity_text, part_figures

__all__ = ["parity_stage", "open_sessions", "DEVICES"]

# where export-time parity runs each backend: TensorRT plans need the GPU, the others run on this CPU
DEVICES = {"tensorrt": "cuda"}


def open_sessions(bundle: Bundle, backend: str, threads: int | None) -> dict[str, BackendSession]:
    """Every part of ``bundle`` for ``backend``, opened as a device or server opens it."""
    from edgesplit.runtime.backends import open_part

    device = DEVICES.get(backend, "cpu")
    return {p: open_part(bundle, p, backend, device, threads) for p in bundle.parts()}


def parity_stage(plan: ExportPlan, art: Artifacts, bundle: Bundle, steps: Steps) -> tuple[list[dict[str, Any]],
                                                                                           list[str]]:
    """Report rows (one per backend and part) and the failed checks, ``"backend: check"``."""
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for backend in plan.backends:
        with steps.step(f"parity {backend}"):
            sessions, figures = _measure(plan, art, bundle, backend, steps, failures)
        try:
            for part in art.parts:
                session = sessions.get(part) if sessions else None
                rows.append(_row(plan, art, bundle, backend, part, session, figures))
        finally:  # the staged bundle is renamed next: no session may keep its files open
            for session in (sessions or {}).values():
                session.close()
    return rows, failures


def _measure(plan: ExportPlan, art: Artifacts, bundle: Bundle, backend: str, steps: Steps,
             failures: list[str]) -> tuple[dict[str, BackendSession] | None, dict[str, Any]]:
    try:
        sessions = open_sessions(bundle, backend, plan.threads)
    except BackendUnavailable as exc:
        if backend != "tensorrt":  # onnxruntime and OpenVINO are export dependencies: a failure is real
            raise
        steps.say(f"parity {backend}: not measured (the runtime cannot run TensorRT here: {exc})")
        return None, {}
    assert art.ref is not None
    try:
        figures = measure(sessions, art.ref)
    except BaseException:
        for session in sessions.values():
            session.close()
        raise
    bad = failed_checks(plan.precision, figures, plan.tolerances)
    failures += [f"{backend}: {b}" for b in bad]
    verdict = f"  FAILED: {'; '.join(bad)}" if bad else ""
    steps.say(f"parity {backend}: {parity_text(figures)}{verdict}")
    return sessions, figures


def _row(plan: ExportPlan, art: Artifacts, bundle: Bundle, backend: str, part: str, session: BackendSession | None,
         figures: dict[str, Any]) -> dict[str, Any]:
    latency = None
    if session is not None:
        latency = round(median_latency_ms(session, {art.inputs[part]: art.part_inputs(part)[:1]}), 4)
    entry = art.files[part][backend]
    row: dict[str, Any] = {
        "format": FORMAT_OF[backend], "backend": backend, "precision": plan.precision, "part": part,
        "file": entry["model"], "bytes": sum((bundle.path / entry[k]).stat().st_size for k in ("model", "weights")
                                             if k in entry),
        "device": "gpu" if DEVICES.get(backend, "cpu") != "cpu" else "cpu",
        "latency_ms_b1": latency, "parity": part_figures(part, figures),
    }
    if session is not None:
        row["session"] = session.info()
    if plan.binary_layers:
        row["binary"] = _binary_row(backend, plan.binary_layers, session)
    return row


def _binary_row(backend: str, layers: int, session: BackendSession | None) -> dict[str, Any]:
    """How a backend runs a binary student's 1-bit layers: OpenVINO's count is read from its compiled graph."""
    if backend != "openvino":
        return {"layers": layers, "runs_as": "INT8 Q/DQ"}
    count = None if session is None else session.info().get("binary_convolutions")
    return {"layers": layers, "runs_as": "BinaryConvolution", "binary_convolutions": count}
