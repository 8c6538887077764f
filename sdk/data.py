"""ImageFolder datasets on Pillow (class = sub-folder), seeded stratified splits, and an in-memory image cache.

Torch-free; the training engine turns the uint8 batches into tensors.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ._checks import positive_int
from .errors import ConfigError, DataError
from .preprocess import Preprocess, eval_crop, load_image, random_resized_crop

__all__ = ["IMAGE_EXTENSIONS", "SUBSETS", "ImageFolder", "stratified_split", "subset_indices", "ImageCache",
           "BatchStream", "shard_epoch"]

SUBSETS = ("all", "val")  # what an evaluation runs on: every image, or the held-out part of a training split

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


def subset_indices(labels: np.ndarray, subset: str, *, val_fraction: float, seed: int,
                   limit: int | None = None) -> np.ndarray:
    """Indices an evaluation runs on: ``all`` images or the ``val`` part of ``stratified_split(val_fraction, seed)``;
    ``limit`` keeps a seeded subset of those, the same for a checkpoint and for its bundle, so their numbers compare."""
    if subset not in SUBSETS:
        raise ConfigError(f"unknown subset {subset!r}; choose {' or '.join(map(repr, SUBSETS))}")
    idx = stratified_split(labels, val_fraction, seed)[1] if subset == "val" else np.arange(len(labels))
    if limit is not None and positive_int(limit, "limit") < len(idx):
        idx = np.sort(np.random.default_rng(0).permutation(idx)[:limit])
    return idx


def renamed_subset(subset: str, split: str | None) -> str:
    """``subset``, or the value of the keyword it replaced (``split=``, a word kept for split computing), with a
    ``DeprecationWarning``."""
    if split is None:
        return subset
    warnings.warn("the evaluation keyword split= is now subset=", DeprecationWarning, stacklevel=3)
    return split


class ImageCache:
    """Decodes a subset of a dataset once and keeps the RGB images in memory.

    Every file is decoded up front, so a corrupt image is reported by path before training starts, not halfway
    through an epoch: ``on_error="raise"`` lists them all in one ``DataError``, ``"skip"`` drops them with a warning.
    ``workers`` threads decode in parallel (Pillow releases the GIL while decoding).
    """

    def __init__(self, dataset: ImageFolder, indices: Sequence[int], on_error: str = "raise",
                 max_side: int | None = None, workers: int = 0):
        self.dataset = dataset
        samples = [dataset.samples[int(i)] for i in indices]

        def decode(s: Sample) -> Image.Image | str:
            try:
                img = load_image(s.path)
            except DataError as exc:
                return str(exc)
            if max_side is not None and min(img.size) > max_side:
                img.thumbnail((max_side * img.size[0] // min(img.size), max_side * img.size[1] // min(img.size)))
            return img

        if workers > 0 and len(samples) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                decoded = list(pool.map(decode, samples, chunksize=32))
        else:
            decoded = [decode(s) for s in samples]
        images: list[Image.Image] = []
        labels: list[int] = []
        bad: list[str] = []
        for s, img in zip(samples, decoded):
            if isinstance(img, str):
                bad.append(img)
                continue
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

    def train_batches(self, batch_size: int, size: int, seed: int, epoch: int, scale: tuple[float, float],
                      hflip: bool = True, augment: bool = True, rank: int = 0, world_size: int = 1,
                      workers: int = 0, prefetch: int = 4, spec: Preprocess | None = None) -> "BatchStream":
        """One epoch of shuffled training batches (uint8 N x size x size x 3, int64 labels, int64 image indices).

        ``batch_size`` is the global batch: with ``world_size`` processes each rank gets its slice of every global
        batch (:func:`shard_epoch`). Each image's crop comes from its own generator seeded by (seed, epoch,
        position in the epoch), so the augmented images do not depend on the number of workers or processes.
        ``augment=False`` gives deterministic center crops (``spec``'s evaluation crop at ``size``).
        """
        plan = shard_epoch(len(self.images), batch_size, seed, epoch, rank, world_size)
        eval_spec = None
        if not augment:  # the evaluation crop's resize/size ratio, at the training size
            eval_spec = Preprocess.for_size(size, None if spec is None else round(spec.resize * size / spec.size))

        def make(batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            positions, idx = batch
            crops = []
            for pos, i in zip(positions, idx):
                if eval_spec is not None:
                    crops.append(eval_crop(self.images[i], eval_spec))
                else:
                    rng = np.random.default_rng([seed, epoch, int(pos)])
                    crops.append(random_resized_crop(self.images[i], size, rng, scale=scale, hflip=hflip))
            return np.stack(crops), self.labels[idx], idx

        return BatchStream(plan, make, workers=workers, prefetch=prefetch)

    def eval_batches(self, batch_size: int, spec: Preprocess) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches with evaluation preprocessing, in order."""
        for start in range(0, len(self.images), batch_size):
            imgs = self.images[start:start + batch_size]
            yield np.stack([eval_crop(im, spec) for im in imgs]), self.labels[start:start + batch_size]


def shard_epoch(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                world_size: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's batches of one epoch: ``[(positions, image indices), ...]``.

    One seeded permutation of the ``n`` images per epoch, cut into global batches of ``batch_size`` (the last,
    short one dropped); rank ``r`` of ``world_size`` takes the r-th contiguous slice of each global batch, so the
    ranks see disjoint images and together exactly the images a single process would see, step by step.
    """
    if batch_size % world_size:
        raise DataError(f"batch_size {batch_size} is the global batch and must divide evenly over "
                        f"{world_size} processes")
    order = np.random.default_rng([seed, epoch]).permutation(n)
    local = batch_size // world_size
    plan = []
    for start in range(0, n - n % batch_size, batch_size):
        lo = start + rank * local
        positions = np.arange(lo, lo + local)
        plan.append((positions, order[positions]))
    return plan


class BatchStream:
    """Iterates prepared batches, building up to ``prefetch`` of them ahead on ``workers`` threads.

    ``wait_s`` is the time the consumer spent blocked waiting for a batch (the data pipeline's share of an epoch).
    """

    def __init__(self, plan: list[Any], make: Callable[[Any], Any], workers: int = 0, prefetch: int = 4) -> None:
        self.plan = plan
        self.make = make
        self.workers = workers
        self.prefetch = max(1, prefetch)
        self.wait_s = 0.0

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[Any]:
        if self.workers <= 0:
            for item in self.plan:
                t0 = time.perf_counter()
                batch = self.make(item)
                self.wait_s += time.perf_counter() - t0
                yield batch
            return
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="edgesplit-data")
        pending: deque[Future[Any]] = deque()
        items = iter(self.plan)
        try:
            for item in items:
                pending.append(pool.submit(self.make, item))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                t0 = time.perf_counter()
                batch = pending.popleft().result()
                self.wait_s += time.perf_counter() - t0
                nxt = next(items, None)
                if nxt is not None:
                    pending.append(pool.submit(self.make, nxt))
                yield batch
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
