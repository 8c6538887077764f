"""Image loading and the evaluation preprocessing shared by training, export parity and the runtime.

Torch-free: Pillow and numpy only, so a device preprocesses exactly as training evaluated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._checks import is_int
from .errors import ConfigError, DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PIXEL_SCALE", "Preprocess", "ImageInput", "load_image", "eval_crop", "normalization", "normalize",
           "random_resized_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageInput = Union[str, Path, Image.Image, np.ndarray]


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, center-crop ``size``; normalization happens in the graph."""

    size: int = 128
    resize: int = 146
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def for_size(cls, size: int, resize: int | None = None) -> "Preprocess":
        return cls(size=size, resize=resize or int(math.floor(size / 0.875)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "preprocess") -> "Preprocess":
        """A spec from its ``to_dict()`` form; a missing key or a bad value is a ``ConfigError`` naming
        ``where.<key>``."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping with size, resize, mean and std, got "
                              f"{type(d).__name__}")
        missing = [k for k in ("size", "resize", "mean", "std") if k not in d]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)} (expected size, resize, mean, std and "
                              "optionally interpolation)")
        size, resize = _side(d["size"], f"{where}.size"), _side(d["resize"], f"{where}.resize")
        if resize < size:
            raise ConfigError(f"{where}: resize {resize} is smaller than the crop size {size}; resize must be >= size")
        interpolation = d.get("interpolation", "bilinear")
        if not isinstance(interpolation, str) or interpolation not in _RESAMPLE:
            raise ConfigError(f"{where}.interpolation: {_short(interpolation)} is not one of "
                              f"{', '.join(_RESAMPLE)}")
        return cls(size=size, resize=resize, mean=_triple(d["mean"], f"{where}.mean", positive=False),
                   std=_triple(d["std"], f"{where}.std", positive=True), interpolation=interpolation)


MAX_SIDE = 8192  # pixels; far above any model input


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _side(value: Any, where: str) -> int:
    if not is_int(value) or not 1 <= value <= MAX_SIDE:
        raise ConfigError(f"{where}: expected an integer number of pixels in 1..{MAX_SIDE}, got {_short(value)}")
    return value


def _triple(value: Any, where: str, *, positive: bool) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in value)
    if not ok:
        kind = "positive " if positive else ""
        raise ConfigError(f"{where}: expected 3 finite {kind}numbers (one per RGB channel), got {_short(value)}")
    return (float(value[0]), float(value[1]), float(value[2]))


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load_image(image: ImageInput) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or a uint8 HxWx3 array; a bad input is a ``DataError``."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"an image array must be uint8 with shape (H, W, 3), got {image.dtype} {image.shape}")
        return Image.fromarray(image, "RGB")
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                im.load()
                return im.convert("RGB")
        except FileNotFoundError as exc:
            raise DataError(f"{image}: no such image file") from exc
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{image}: not a readable image ({exc})") from exc
    raise DataError(f"expected an image path, PIL image or uint8 array, got {type(image).__name__}")


def _resize_shorter(img: Image.Image, shorter: int, interpolation: str) -> Image.Image:
    w, h = img.size
    if min(w, h) == shorter:
        return img
    if w <= h:
        nw, nh = shorter, max(1, round(h * shorter / w))
    else:
        nw, nh = max(1, round(w * shorter / h)), shorter
    return img.resize((nw, nh), _RESAMPLE[interpolation])


def eval_crop(image: ImageInput, spec: Preprocess) -> np.ndarray:
    """Evaluation preprocessing up to uint8: shorter side to ``spec.resize``, center crop ``spec.size``."""
    img = _resize_shorter(load_image(image), spec.resize, spec.interpolation)
    w, h = img.size
    left, top = (w - spec.size) // 2, (h - spec.size) // 2
    img = img.crop((left, top, left + spec.size, top + spec.size))
    return np.asarray(img, dtype=np.uint8)


PIXEL_SCALE = 255.0  # uint8 -> [0, 1]


def normalization(spec: Any) -> tuple[np.ndarray, np.ndarray]:
    """The one definition of input normalization: ``(x / 255 - mean) / std`` on float32 NCHW, in that order.

    Returns mean and std as float32 (1, 3, 1, 1). Every implementation (numpy here, the torch training input, the
    exported ONNX graphs, the OpenVINO binary graph) takes its constants from this function and applies the same
    four steps: cast to float32, transpose NHWC -> NCHW, divide by ``PIXEL_SCALE``, subtract mean, divide by std.
    ``spec`` is anything with ``mean`` and ``std`` (a ``Preprocess`` or a binary network's ``InputSpec``).
    """
    shape = (1, 3, 1, 1)
    return np.asarray(spec.mean, np.float32).reshape(shape), np.asarray(spec.std, np.float32).reshape(shape)


def normalize(batch: np.ndarray, spec: Preprocess) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW by ``normalization``."""
    mean, std = normalization(spec)
    x = batch.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(PIXEL_SCALE)
    return np.ascontiguousarray((x - mean) / std)


def random_resized_crop(
    img: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Training augmentation: a random crop of random area and aspect ratio, resized to ``size``, maybe flipped."""
    w, h = img.size
    area = w * h
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # fall back to a center crop of the whole image
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    out = img.resize((size, size), _RESAMPLE[interpolation], box=box)
    if hflip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)
