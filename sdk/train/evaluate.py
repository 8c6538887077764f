"""``edgesplit eval`` on a checkpoint: top-1 on an ImageFolder directory, optionally through a JPEG/WebP input codec
(the input-compression baseline), and for split students the real bitstream path with its bytes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from edgesplit import bitstream
from edgesplit.bundle import sha256_file
from edgesplit.data import ImageFolder, renamed_subset, subset_indices
from edgesplit.errors import BackendUnavailable, ConfigError, DataError
from edgesplit.interfaces import SplitModel
from edgesplit.preprocess import Preprocess, eval_crop

from .checkpoint import load
from .engine import to_input

__all__ = ["INPUT_CODECS", "CODEC_OPTIONS", "compress_image", "select_indices", "evaluate_checkpoint", "file_fingerprint",
           "logits_through_payloads"]

INPUT_CODECS = ("jpeg", "webp", "avif", "jxl")

# The strongest settings each codec offers through Pillow, so the baselines are not strawmen: optimized Huffman
# tables for JPEG (4:2:0, what cameras and browsers send), WebP's slowest method, JPEG XL's highest effort, and AVIF
# (libaom) at speed 2: on 128 px crops speed 0 gave the same bytes within 0.3% at 2.6-3x the encode time, speed 4
# ~1% different bytes and a lower top-1 (bench/results/rd.json, "avif_speed_check").
CODEC_OPTIONS: dict[str, dict[str, Any]] = {
    "jpeg": {"subsampling": 2, "optimize": True},
    "webp": {"method": 6},
    "avif": {"speed": 2},
    "jxl": {"effort": 9},
}


def _codec_available(codec: str) -> None:
    """Register the Pillow plugin a codec needs, or say which extra installs it."""
    from PIL import features

    if codec == "avif" and not features.check("avif"):
        try:
            import pillow_avif  # noqa: F401  (registers AVIF with Pillow)
        except ImportError as exc:
            raise BackendUnavailable("the AVIF input codec needs Pillow >= 11.3 with AVIF or pillow-avif-plugin: "
                                     "pip install edgesplit[codecs]") from exc
    if codec == "jxl":
        try:
            import pillow_jxl  # noqa: F401  (registers JPEG XL with Pillow)
        except ImportError as exc:
            raise BackendUnavailable("the JPEG XL input codec needs pillow-jxl-plugin: "
                                     "pip install edgesplit[codecs]") from exc


def compress_image(crop: np.ndarray, codec: str, quality: int,
                   options: dict[str, Any] | None = None) -> tuple[np.ndarray, int]:
    """Encode a uint8 HxWx3 crop with Pillow at ``quality``; return the decoded image and the encoded size."""
    if codec not in INPUT_CODECS:
        raise ConfigError(f"unknown input codec {codec!r}; choose one of {', '.join(INPUT_CODECS)}")
    low = 0 if codec in ("avif", "jxl") else 1
    if not low <= quality <= 100:
        raise ConfigError(f"{codec} quality must be {low}..100, got {quality}")
    _codec_available(codec)
    buf = io.BytesIO()
    opts: dict[str, Any] = {"quality": quality, **CODEC_OPTIONS[codec], **(options or {})}
    Image.fromarray(crop, "RGB").save(buf, format=codec.upper(), **opts)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        decoded = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return decoded, len(data)


def file_fingerprint(path: str | Path) -> bytes:
    """8 bytes identifying a checkpoint or bundle file: the first bytes of its sha256 (``sha256_file``)."""
    return bytes.fromhex(sha256_file(Path(path)))[:bitstream.FINGERPRINT_BYTES]


def select_indices(dataset: ImageFolder, subset: str, info: dict[str, Any], limit: int | None) -> np.ndarray:
    """All images, or the images the checkpoint's training held out (``subset='val'``); ``limit`` keeps a seeded
    subset of those."""
    data_cfg = info.get("train_config", {}).get("data", {})
    return subset_indices(dataset.labels, subset, val_fraction=data_cfg.get("val_fraction", 0.1),
                          seed=data_cfg.get("split_seed", 0), limit=limit)


def _batches(dataset: ImageFolder, idx: np.ndarray, spec: Preprocess, batch_size: int, codec: str | None,
             quality: int | None, options: dict[str, Any] | None = None
             ) -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    for start in range(0, len(idx), batch_size):
        crops, labels, sizes = [], [], []
        for i in idx[start:start + batch_size]:
            crop = eval_crop(dataset.samples[int(i)].path, spec)
            if codec is not None:
                crop, n = compress_image(crop, codec, 75 if quality is None else int(quality), options)
                sizes.append(n)
            crops.append(crop)
            labels.append(dataset.samples[int(i)].label)
        yield np.stack(crops), np.asarray(labels), sizes


def logits_through_payloads(model: Any, codec: Any, symbols: np.ndarray,
                            fingerprint: bytes) -> tuple[torch.Tensor, list[int]]:
    """A split student's logits for a batch of symbols sent the way a device sends them: each image's symbols
    coded into one payload and decoded back from it; also each payload's size in bytes."""
    payloads = [bitstream.encode_payload(codec, s, fingerprint=fingerprint) for s in symbols]
    decoded = [bitstream.decode_payload(codec, p, fingerprint=fingerprint, shape=s.shape)
               for p, s in zip(payloads, symbols)]
    return model.decode_symbols(torch.from_numpy(np.stack(decoded))), [len(p) for p in payloads]


@torch.no_grad()
def evaluate_checkpoint(path: str | Path, data: str | Path, *, limit: int | None = None, subset: str = "all",
                        input_codec: str | None = None, quality: int | None = None,
                        codec_options: dict[str, Any] | None = None,
                        batch_size: int = 64, split: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on ``subset`` (``all`` or ``val``) of ``data``; split students go image by image through
    symbols -> codec -> bitstream -> decode. ``split`` is the old name of ``subset``."""
    subset = renamed_subset(subset, split)
    if input_codec is not None and input_codec not in INPUT_CODECS:
        raise ConfigError(f"unknown input codec {input_codec!r}; choose one of {', '.join(INPUT_CODECS)}")
    model = load(path)
    info = model.edgesplit_info  # type: ignore[attr-defined]
    spec = Preprocess.from_dict(info["preprocess"])
    dataset = ImageFolder(data, classes=info["labels"])
    idx = select_indices(dataset, subset, info, limit)
    if len(idx) == 0:
        raise DataError(f"{data}: no images selected")
    is_split = isinstance(model, SplitModel)
    codec = model.codec() if is_split else None  # type: ignore[operator]
    fingerprint = file_fingerprint(path)
    correct, n, input_bytes, payload_bytes, info_bits = 0, 0, [], [], []
    t0 = time.time()
    for xb, yb, sizes in _batches(dataset, idx, spec, batch_size, input_codec, quality, codec_options):
        x = to_input(xb, spec)
        if is_split:
            symbols = model.encode_symbols(x).numpy()  # type: ignore[operator]
            logits, sizes_b = logits_through_payloads(model, codec, symbols, fingerprint)
            payload_bytes.extend(sizes_b)
            info_bits.extend(codec.information_bits(s) for s in symbols)
        else:
            logits = model(x)
        correct += int((logits.argmax(1).numpy() == yb).sum())
        n += len(yb)
        input_bytes.extend(sizes)
    result: dict[str, Any] = {"target": str(path), "data": str(data), "subset": subset, "images": n, "top1": correct / n,
                              "seconds": round(time.time() - t0, 2)}
    if input_codec is not None:
        result.update({"input_codec": input_codec, "quality": quality, "mean_input_bytes": float(np.mean(input_bytes))})
    if is_split:
        result.update({"mean_payload_bytes": float(np.mean(payload_bytes)),
                       "mean_information_bytes": float(np.mean(info_bits)) / 8.0,
                       "latent_shape": list(symbols.shape[1:])})
    return result
