"""Calibration and parity images: real ones from an ImageFolder directory (preprocessed like evaluation), with
labels when its folders are the model's classes, or seeded synthetic ones."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from edgesplit._checks import positive_int
from edgesplit.data import IMAGE_EXTENSIONS, ImageFolder
from edgesplit.errors import DataError
from edgesplit.preprocess import Preprocess, eval_crop

__all__ = ["Calibration", "calibration_images", "synthetic_images"]

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    """uint8 NHWC images at the bundle's size; ``labels`` (indices into the model's labels) when known."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str

    def describe(self) -> str:
        return f"{len(self.images)} {self.source}" + (" (labelled)" if self.labels is not None else "")


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields with noise: image-like statistics without a dataset (deterministic)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(low, "RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32)
        field += rng.normal(0.0, 12.0, size=field.shape)
        out[i] = np.clip(field, 0, 255).astype(np.uint8)
    return out


def _pick(count: int, n: int, seed: int) -> np.ndarray:
    idx = np.arange(count)
    if n < count:
        idx = np.sort(np.random.default_rng(seed).permutation(count)[:n])
    return idx


def calibration_images(calib: str | Path | None, spec: Preprocess, labels: Sequence[str], n: int,
                       seed: int = 0) -> Calibration:
    """``n`` images from ``calib`` (a seeded subset when it holds more), or ``n`` synthetic images."""
    positive_int(n, "calib_images")
    if calib is None:
        return Calibration(synthetic_images(n, spec.size, seed), None, "synthetic images")
    root = Path(calib)
    if not root.is_dir():
        raise DataError(f"{root}: calibration directory does not exist (expected root/<class>/<image> files)")
    paths: list[Path]
    y: np.ndarray | None
    try:
        folder = ImageFolder(root, classes=list(labels))
        paths, y = [s.path for s in folder.samples], folder.labels
    except DataError:
        flat = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not flat:
            raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) for calibration") from None
        log.info("%s: folder names are not the model's labels; calibrating without accuracy figures", root)
        paths, y = flat, None
    idx = _pick(len(paths), n, seed)
    images = np.stack([eval_crop(paths[int(i)], spec) for i in idx])
    return Calibration(images, None if y is None else y[idx], f"images from {root}")
