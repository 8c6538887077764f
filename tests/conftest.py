"""Shared fixtures: a tiny synthetic ImageFolder dataset and a tiny trained-from-nothing teacher checkpoint."""

from __future__ import annotations

import os

# Tiny models only: one thread each is fastest, and keeps tests from starving a training run beside them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "datasets" / "imagenette2-160" / "train"
CLASSES = ["apple", "banana", "cherry"]


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny inputs gain nothing from threads, and contended OpenMP threads spin (100x slower beside training).
    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_recipe(**over: object) -> dict:
    """A recipe that trains in a second on ``make_image_folder``'s data: ResNet-18 at 1/8 width, 32 px, float32."""
    base = {
        "name": "tiny",
        "model": {"name": "resnet18", "params": {"width": 0.125}},
        "data": {"image_size": 32, "val_fraction": 0.25, "workers": 0},
        "losses": [{"name": "ce"}],
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 1,
        "batch_size": 6,
        "threads": 1,
        "precision": "fp32",
    }
    base.update(over)
    return base


def make_image_folder(root: Path, per_class: int = 8, size: tuple[int, int] = (72, 56), seed: int = 0) -> Path:
    """Class-dependent colors and stripes, so a tiny model can learn them; JPEG and PNG mixed."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(size[1], size[0], 3), dtype=np.uint8)
            img[..., c] += 150
            img[:, (i % 4)::(c + 2), :] //= 2
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(img, "RGB").save(d / f"img{i:03d}{ext}")
    return root


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")
