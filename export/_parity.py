"""Parity of exported graphs with the torch model (batch 1 and 3 through the same file), the checks that gate an
export, and batch-1 latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edgesplit.interfaces import BackendSession

__all__ = ["MATCH_ATOL", "TOLERANCES", "Reference", "measure", "failed_checks", "logits_scale", "median_latency_ms"]

# What an export must reach to be published (override per call with ``tolerances=``).
#   fp32: logits within max_abs_logits x logits_scale of torch (split: the decoder fed torch's symbols), where
#         logits_scale = max(1, max |torch logits|): float32 rounding grows with the size of the activations, so
#         a trained model whose logits reach 20 legitimately differs by ~20x more than one whose logits stay
#         below 1 (the report keeps the absolute figure); and the encoder's symbols equal to torch's for at least
#         symbol_agreement of the elements;
#   fp16, int8: the top-1 class equal to torch fp32's for at least top1_agreement of the images, and with
#         labelled calibration images an accuracy no more than accuracy_drop below torch's;
#   binary (an fp32 export of a model with 1-bit layers): the logits of at least logits_match_fraction of the
#         images within MATCH_ATOL of torch's, and the top-1 of at least top1_agreement. A sign activation is
#         discontinuous: when a value sits within float rounding of its threshold, a runtime that orders the same
#         float operations differently (OpenVINO folds the input normalization into the stem) flips that one
#         activation and moves the image's logits by ~0.1-0.3, exactly where torch would too under another
#         summation order. Such flips touch few images; a wrong graph (weights, thresholds, padding) touches all.
MATCH_ATOL = 1e-4
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_logits": MATCH_ATOL, "symbol_agreement": 0.999},
    "fp16": {"top1_agreement": 0.98, "accuracy_drop": 0.02},
    "int8": {"top1_agreement": 0.90, "accuracy_drop": 0.05},
    "binary": {"logits_match_fraction": 0.8, "top1_agreement": 0.95},
}


@dataclass
class Reference:
    """torch fp32 outputs on the calibration images: logits (N, K), and for split models the symbols."""

    images: np.ndarray
    logits: np.ndarray
    symbols: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def accuracy(self) -> float | None:
        if self.labels is None:
            return None
        return float((self.logits.argmax(1) == self.labels).mean())


def _chunks(n: int) -> list[slice]:
    """Batch 1 (the first image) then batches of 3 over all images: two batch sizes through the same file."""
    return [slice(0, 1)] + [slice(i, min(i + 3, n)) for i in range(0, n, 3)]


def measure(runners: Mapping[str, BackendSession], ref: Reference) -> dict[str, Any]:
    """Parity figures of one backend's parts (its sessions, by part) against ``ref``."""
    n = len(ref.images)
    chunks = _chunks(n)
    split = "encoder" in runners and ref.symbols is not None
    max_abs = 0.0
    e2e = np.empty_like(ref.logits)
    matched = np.zeros(n, dtype=bool)  # per image, over its batch-of-3 pass: logits within MATCH_ATOL of torch's
    sym_equal, sym_total = 0, 0
    for k, sl in enumerate(chunks):
        if split:
            symbols = runners["encoder"].run({"image": ref.images[sl]})["symbols"]
            torch_symbols = ref.symbols[sl]  # type: ignore[index]
            sym_equal += int((symbols == torch_symbols).sum())
            sym_total += symbols.size
            logits = runners["decoder"].run({"symbols": torch_symbols})["logits"]
            max_abs = max(max_abs, float(np.abs(logits - ref.logits[sl]).max()))
            if not np.array_equal(symbols, torch_symbols):
                logits = runners["decoder"].run({"symbols": symbols.astype(np.int32)})["logits"]
        else:
            logits = runners["model"].run({"image": ref.images[sl]})["logits"]
            max_abs = max(max_abs, float(np.abs(logits - ref.logits[sl]).max()))
        if k > 0:
            e2e[sl] = logits
            matched[sl] = np.abs(logits - ref.logits[sl]).max(axis=1) <= MATCH_ATOL
    scale = logits_scale(ref.logits)
    result: dict[str, Any] = {
        "images": n,
        "batches": sorted({sl.stop - sl.start for sl in chunks}),
        "max_abs_logits": max_abs,
        "logits_scale": scale,
        "max_rel_logits": max_abs / scale,
        "logits_match_fraction": float(matched.mean()),
        "top1_agreement": float((e2e.argmax(1) == ref.logits.argmax(1)).mean()),
    }
    if split:
        result["symbol_agreement"] = sym_equal / sym_total
        result["symbols_differing"] = sym_total - sym_equal
    if ref.labels is not None:
        acc = float((e2e.argmax(1) == ref.labels).mean())
        result["accuracy"] = acc
        result["accuracy_drop"] = float(ref.accuracy or 0.0) - acc
    return result


def logits_scale(logits: np.ndarray) -> float:
    """What ``max_abs_logits`` is relative to: the largest torch logit magnitude, at least 1."""
    return max(1.0, float(np.abs(logits).max())) if np.size(logits) else 1.0


def failed_checks(precision: str, figures: Mapping[str, Any], tolerances: Mapping[str, float]) -> list[str]:
    """Human-readable failures of ``figures`` against the tolerances of ``precision`` (empty: passed)."""
    out = []
    for key, limit in tolerances.items():
        value = figures.get(key)
        if value is None:
            continue
        if key == "max_abs_logits":
            scale = float(figures.get("logits_scale", 1.0))
            if not value <= limit * scale:
                relative = f" x logits scale {scale:.3g} = {limit * scale:.3g}" if scale != 1.0 else ""
                out.append(f"{key} {value:.3g} > {limit:.3g}{relative}")
        elif key == "accuracy_drop":
            if not value <= limit:
                out.append(f"{key} {value:.3g} > {limit:.3g}")
        elif not value >= limit:
            extra = f" ({figures['symbols_differing']} symbols differ)" if key == "symbol_agreement" else ""
            out.append(f"{key} {value:.6g} < {limit:.6g}{extra}")
    return out


def median_latency_ms(runner: BackendSession, inputs: dict[str, np.ndarray], *, warmup: int = 2, runs: int = 20,
                      budget_s: float = 1.0) -> float:
    """Median wall time of ``runner.run(inputs)`` in milliseconds (at most ``runs`` runs, about ``budget_s``)."""
    for _ in range(warmup):
        runner.run(inputs)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        runner.run(inputs)
        times.append((time.perf_counter() - t) * 1e3)
    return float(statistics.median(times))
