"""fp32 export parity is relative to the logits' scale: float32 rounding of a trained model with large logits passes,
a wrong graph does not, and models with small logits keep the absolute limit; the report keeps the absolute figure."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from edgesplit.export._parity import TOLERANCES, Reference, failed_checks, logits_scale, measure  # noqa: E402


def _figures(peak: float, error: float, n: int = 7) -> dict:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 3), np.uint8)
    logits = np.tile(np.array([[peak, -peak / 2, 0.1]], np.float32), (n, 1))
    ref = Reference(images=images, logits=logits)

    class Runner:
        def run(self, inputs: dict) -> dict:
            idx = inputs["image"][:, 0, 0, 0].astype(int)
            out = logits[idx].copy()
            out[:, 1] += error
            return {"logits": out}

    return measure({"model": Runner()}, ref)


def test_rounding_of_a_trained_model_passes() -> None:
    fig = _figures(peak=16.0, error=1.6e-4)  # what a freshly trained student showed
    assert fig["max_abs_logits"] == pytest.approx(1.6e-4, rel=1e-2)  # the absolute figure stays in the report
    assert fig["logits_scale"] == 16.0 and fig["max_rel_logits"] == pytest.approx(1e-5, rel=1e-2)
    assert failed_checks("fp32", fig, TOLERANCES["fp32"]) == []


def test_a_wrong_graph_still_fails_with_the_scale_in_the_message() -> None:
    fig = _figures(peak=16.0, error=0.01)
    (failure,) = failed_checks("fp32", fig, TOLERANCES["fp32"])
    assert failure.startswith("max_abs_logits 0.01 > 0.0001 x logits scale 16 = 0.0016")


def test_small_logits_keep_the_absolute_limit() -> None:
    fig = _figures(peak=0.5, error=1.6e-4)
    assert fig["logits_scale"] == 1.0
    assert failed_checks("fp32", fig, TOLERANCES["fp32"]) == ["max_abs_logits 0.00016 > 0.0001"]
    assert logits_scale(np.array([[-30.0, 2.0]])) == 30.0 and logits_scale(np.zeros((0, 3))) == 1.0
