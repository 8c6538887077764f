"""ImageFolder datasets on Pillow (class = sub-folder), seeded stratified splits, and an in-memory image cache.

Torch-free; the training engine turns the uint8 batches into tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from .errors import DataError
from .preprocess import Preprocess, eval_crop, load_image, random_resized_crop

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "stratified_split", "ImageCache"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


class ImageFolder:
    """``root/<class>/<image>``; classes are the sorted sub-folder names unless ``classes`` maps them by name.

    With ``classes`` (a model's labels), every sub-folder must be one of them, so any directory with the same
    classes (in any subset or order) evaluates against the right outputs.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None, limit_per_class: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset directory does not exist (expected root/<class>/<image> files)")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(f"{self.root}: no class sub-folders found (expected root/<class>/<image> files)")
        if classes is None:
            self.classes = folders
        else:
            self.classes = list(classes)
            unknown = [f for f in folders if f not in self.classes]
            if unknown:
                inner = [f for f in unknown if any((self.root / f / c).is_dir() for c in self.classes)]
                hint = f"; the class folders seem to be in {self.root / inner[0]}" if inner else ""
                raise DataError(
                    f"{self.root}: folder(s) {', '.join(unknown)} are not classes of this model "
                    f"(model labels: {', '.join(self.classes)}){hint}"
                )
        index = {c: i for i, c in enumerate(self.classes)}
        samples: list[Sample] = []
        for folder in folders:
            files = sorted(
                p for p in (self.root / folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if limit_per_class is not None:
                files = files[:limit_per_class]
            samples.extend(Sample(p, index[folder]) for p in files)
        if not samples:
            nested = [f for f in folders if any(p.is_dir() for p in (self.root / f).iterdir())]
            hint = f"; did you mean {self.root / nested[0]}?" if len(nested) == 1 else ""
            raise DataError(f"{self.root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders{hint}")
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((s.label for s in self.samples), dtype=np.int64, count=len(self.samples))

    def load(self, i: int) -> Image.Image:
        return load_image(self.samples[i].path)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split holding out ``val_fraction`` of every class (at least one image per class)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = max(1, int(round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class ImageCache:
    """Decodes a subset of a dataset once and keeps the RGB images in memory.

    Every file is decoded up front, so a corrupt image is reported by path before training starts, not halfway
    through an epoch: ``on_error="raise"`` lists them all in one ``DataError``, ``"skip"`` drops them with a warning.
    """

    def __init__(self, dataset: ImageFolder, indices: Sequence[int], on_error: str = "raise",
                 max_side: int | None = None):
        self.dataset = dataset
        images: list[Image.Image] = []
        labels: list[int] = []
        bad: list[str] = []
        for i in indices:
            s = dataset.samples[int(i)]
            try:
                img = load_image(s.path)
            except DataError as exc:
                bad.append(str(exc))
                continue
            if max_side is not None and min(img.size) > max_side:
                img.thumbnail((max_side * img.size[0] // min(img.size), max_side * img.size[1] // min(img.size)))
            images.append(img)
            labels.append(s.label)
        if bad:
            if on_error == "raise":
                raise DataError(f"{len(bad)} unreadable image file(s):\n  " + "\n  ".join(bad[:20]))
            for b in bad:
                log.warning("skipping %s", b)
        if not images:
            raise DataError(f"{dataset.root}: no readable images in the selected split")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.skipped = bad

    def __len__(self) -> int:
        return len(self.images)

    def train_batches(self, batch_size: int, size: int, rng: np.random.Generator, scale: tuple[float, float],
                      hflip: bool = True, drop_last: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shuffled augmented batches: (uint8 N x size x size x 3, int64 labels)."""
        order = rng.permutation(len(self.images))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            x = np.stack([random_resized_crop(self.images[i], size, rng, scale=scale, hflip=hflip) for i in idx])
            yield x, self.labels[idx]

    def eval_batches(self, batch_size: int, spec: Preprocess) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches with evaluation preprocessing, in order."""
        for start in range(0, len(self.images), batch_size):
            imgs = self.images[start:start + batch_size]
            yield np.stack([eval_crop(im, spec) for im in imgs]), self.labels[start:start + batch_size]
