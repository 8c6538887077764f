"""Data: ImageFolder by name, stratified seeded split, corrupt files reported by path, shared preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesplit.data import ImageCache, ImageFolder, stratified_split
from edgesplit.errors import DataError
from edgesplit.preprocess import Preprocess, eval_crop, load_image, normalize, random_resized_crop

from .conftest import CLASSES


def test_image_folder_classes_and_mapping(image_folder: Path) -> None:
    ds = ImageFolder(image_folder)
    assert ds.classes == CLASSES and len(ds) == 24
    # a model whose labels are ordered differently maps folders by name
    ds2 = ImageFolder(image_folder, classes=["cherry", "apple", "banana", "durian"])
    assert {ds2.classes[s.label] for s in ds2.samples} == set(CLASSES)
    assert all(ds2.classes[s.label] == s.path.parent.name for s in ds2.samples)


def test_unknown_folder_is_a_clear_error(image_folder: Path) -> None:
    with pytest.raises(DataError, match="banana.*not classes of this model"):
        ImageFolder(image_folder, classes=["apple", "cherry"])


def test_missing_and_empty_dirs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files"):
        ImageFolder(tmp_path / "empty")


def test_stratified_split_is_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(4), 25)
    tr, va = stratified_split(labels, 0.2, seed=3)
    tr2, va2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(va, va2) and not set(tr) & set(va)
    assert len(tr) + len(va) == 100
    assert all((labels[va] == c).sum() == 5 for c in range(4))
    assert not np.array_equal(va, stratified_split(labels, 0.2, seed=4)[1])


def test_corrupt_image_reported_by_path(image_folder: Path) -> None:
    bad = image_folder / "apple" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    ds = ImageFolder(image_folder)
    with pytest.raises(DataError, match="broken.jpg"):
        ImageCache(ds, range(len(ds)), on_error="raise")
    cache = ImageCache(ds, range(len(ds)), on_error="skip")
    assert len(cache) == len(ds) - 1 and "broken.jpg" in cache.skipped[0]


def test_eval_crop_and_normalize_shapes() -> None:
    spec = Preprocess.for_size(32)
    assert spec.resize == 36
    img = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    crop = eval_crop(img, spec)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    # the same crop from a path, a PIL image and an array
    assert np.array_equal(crop, eval_crop(Image.fromarray(img), spec))
    x = normalize(crop[None], spec)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x[0, 0, 0, 0], (crop[0, 0, 0] / 255 - spec.mean[0]) / spec.std[0], atol=1e-6)
    # every pixel and channel, against the formula in float64
    want = (crop.astype(np.float64).transpose(2, 0, 1) / 255 - np.reshape(spec.mean, (3, 1, 1))) / np.reshape(
        spec.std, (3, 1, 1))
    np.testing.assert_allclose(x[0], want, rtol=0, atol=1e-5)


def test_training_input_is_normalized_like_the_device_input() -> None:
    """The torch training input and the numpy (device) input are the same numbers: one normalization."""
    pytest.importorskip("torch")
    from edgesplit.train import to_input

    spec = Preprocess(size=8, mean=(0.2, 0.5, 0.7), std=(0.1, 0.3, 0.9))
    batch = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = to_input(batch, spec).numpy()
    assert got.shape == (2, 3, 8, 8) and got.dtype == np.float32
    np.testing.assert_array_equal(got, normalize(batch, spec))
    assert np.abs(got - batch.transpose(0, 3, 1, 2) / 255).max() > 1  # normalization did something


def test_bad_image_inputs() -> None:
    with pytest.raises(DataError, match="uint8"):
        load_image(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(DataError, match="no such image"):
        load_image("/nonexistent/x.jpg")
    with pytest.raises(DataError, match="expected an image"):
        load_image(42)  # type: ignore[arg-type]


def test_random_resized_crop_seeded() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    a = random_resized_crop(img, 24, np.random.default_rng(5))
    b = random_resized_crop(img, 24, np.random.default_rng(5))
    assert a.shape == (24, 24, 3) and np.array_equal(a, b)


def test_preprocess_dict_round_trip() -> None:
    spec = Preprocess.for_size(128)
    assert Preprocess.from_dict(spec.to_dict()) == spec
