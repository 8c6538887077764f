"""Parity figures count what differs: top-1 agreement and accuracy follow the images a backend gets wrong, and a split
model's symbol agreement the symbols it changes (sessions faked; any object with ``run`` stands for one)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from edgesplit.export._parity import Reference, measure  # noqa: E402

N, K = 8, 3


def _images() -> np.ndarray:
    return np.arange(N, dtype=np.uint8).reshape(N, 1, 1, 1) * np.ones((1, 4, 4, 3), np.uint8)


def _logits() -> np.ndarray:
    logits = np.zeros((N, K), np.float32)
    logits[np.arange(N), np.arange(N) % K] = 4.0  # image i: class i % 3, by a clear margin
    return logits


class _Model:
    """Answers the reference logits, with the top class of the images in ``flipped`` moved to the next class."""

    def __init__(self, logits: np.ndarray, flipped: set[int]) -> None:
        self.logits, self.flipped = logits, flipped

    def run(self, inputs: dict) -> dict:
        idx = inputs["image"][:, 0, 0, 0].astype(int)
        out = self.logits[idx].copy()
        for row, i in enumerate(idx):
            if i in self.flipped:
                out[row] = np.roll(out[row], 1)
        return {"logits": out}


def test_top1_agreement_and_accuracy_count_the_flipped_images() -> None:
    logits = _logits()
    labels = np.arange(N) % K
    labels[0] = 1  # torch itself is wrong on image 0: accuracy 7/8
    ref = Reference(images=_images(), logits=logits, labels=labels)
    same = measure({"model": _Model(logits, set())}, ref)
    assert same["top1_agreement"] == 1.0 and same["max_abs_logits"] == 0.0 and same["accuracy"] == 7 / 8
    assert same["accuracy_drop"] == 0.0
    two = measure({"model": _Model(logits, {3, 6})}, ref)
    assert two["top1_agreement"] == pytest.approx(6 / 8)
    assert two["accuracy"] == pytest.approx(5 / 8) and two["accuracy_drop"] == pytest.approx(2 / 8)
    assert two["max_abs_logits"] == pytest.approx(4.0) and two["logits_match_fraction"] == pytest.approx(6 / 8)


def test_split_figures_count_changed_symbols() -> None:
    logits = _logits()
    symbols = np.arange(N * 2 * 2 * 2, dtype=np.int32).reshape(N, 2, 2, 2)
    ref = Reference(images=_images(), logits=logits, symbols=symbols)

    class Encoder:
        def run(self, inputs: dict) -> dict:
            idx = inputs["image"][:, 0, 0, 0].astype(int)
            out = symbols[idx].copy()
            out[idx == 5, 0, 0, 0] += 1  # one symbol of image 5 differs
            return {"symbols": out}

    class Decoder:
        def run(self, inputs: dict) -> dict:
            s = inputs["symbols"]
            n = s.reshape(len(s), -1)[:, 1] // 8  # the image index, from a symbol the encoder never changes
            out = logits[n].copy()
            out[s[:, 0, 0, 0] != symbols[n, 0, 0, 0]] = np.roll(logits[5], 1)  # a changed symbol changes the class
            return {"logits": out}

    fig = measure({"encoder": Encoder(), "decoder": Decoder()}, ref)
    assert fig["symbols_differing"] == 1 and 0.95 < fig["symbol_agreement"] < 1.0
    assert fig["top1_agreement"] == pytest.approx(7 / 8)
