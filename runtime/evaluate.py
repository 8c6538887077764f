"""``edgesplit eval BUNDLE``: top-1 of a bundle through the deployed path, on an ImageFolder directory.

Split bundles go image -> ``DeviceEncoder`` -> payload bytes -> ``ServerDecoder``; full bundles go through
``DeviceModel``. The same seeded subset (``limit``) as the checkpoint evaluation is used, so the numbers compare.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgesplit.bundle import Bundle
from edgesplit.data import ImageFolder, renamed_subset, subset_indices
from edgesplit.errors import ConfigError, DataError

from .device import DeviceEncoder, DeviceModel, as_bundle
from .server import ServerDecoder

__all__ = ["evaluate_bundle", "select_indices"]

BATCH_SIZE = 32


def select_indices(dataset: ImageFolder, bundle: Bundle, subset: str, limit: int | None) -> np.ndarray:
    """All images (``subset='all'``), or the held-out images the checkpoint was trained without (``'val'``, from the
    manifest's ``train_split``); ``limit`` keeps the seeded subset ``edgesplit eval`` picks for a checkpoint."""
    if subset != "val":
        return subset_indices(dataset.labels, subset, val_fraction=0.0, seed=0, limit=limit)
    info = bundle.manifest.get("train_split")
    if not isinstance(info, dict) or "val_fraction" not in info or "seed" not in info:
        raise ConfigError(f"{bundle.path}: --subset val needs the held-out images of training recorded in the "
                          "manifest ('train_split: {val_fraction, seed}'); this bundle has none. Use --subset all on a "
                          "held-out directory, or re-export from a checkpoint that records them")
    return subset_indices(dataset.labels, subset, val_fraction=float(info["val_fraction"]), seed=int(info["seed"]),
                          limit=limit)


def evaluate_bundle(bundle_dir: str | Path, data_dir: str | Path, backend: str = "onnxruntime",
                    limit: int | None = None, subset: str = "all", *, device: str = "cpu",
                    threads: int | None = None, split: str | None = None) -> dict[str, Any]:
    """Top-1 of a bundle on ``data_dir`` (class sub-folders named like its labels) through ``backend``.

    Returns ``bundle, kind, backend, device, data, subset, images, top1, seconds`` and, for split bundles,
    ``mean_payload_bytes`` and ``latent_shape``. ``split`` is the old name of ``subset``.
    """
    subset = renamed_subset(subset, split)
    bundle = as_bundle(bundle_dir)
    dataset = ImageFolder(data_dir, classes=bundle.labels)
    idx = select_indices(dataset, bundle, subset, limit)
    if len(idx) == 0:
        raise DataError(f"{data_dir}: no images selected (--subset {subset})")
    paths = [dataset.samples[int(i)].path for i in idx]
    truth = np.asarray([dataset.samples[int(i)].label for i in idx])
    start = time.perf_counter()
    payload_bytes: list[int] = []
    predicted: list[int] = []
    if bundle.kind == "split":
        with DeviceEncoder.open(bundle, backend=backend, device=device, threads=threads) as encoder, \
                ServerDecoder.open(bundle, backend=backend, device=device, threads=threads, top_k=1) as decoder:
            runtime = encoder
            for s in range(0, len(paths), BATCH_SIZE):
                payloads = encoder.encode_batch(paths[s:s + BATCH_SIZE])
                payload_bytes += [len(p) for p in payloads]
                predicted += [p.indices[0] for p in decoder.decode_batch(payloads)]
    else:
        with DeviceModel.open(bundle, backend=backend, device=device, threads=threads, top_k=1) as model:
            runtime = model
            for s in range(0, len(paths), BATCH_SIZE):
                predicted += [p.indices[0] for p in model.predict_batch(paths[s:s + BATCH_SIZE])]
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "bundle": str(bundle.path), "kind": bundle.kind, "fingerprint": bundle.fingerprint.hex(),
        "backend": runtime.backend, "device": runtime.device, "data": str(data_dir), "subset": subset,
        "images": len(idx), "top1": float(np.mean(np.asarray(predicted) == truth)), "seconds": round(seconds, 2),
    }
    if bundle.kind == "split":
        result.update({"mean_payload_bytes": float(np.mean(payload_bytes)),
                       "latent_shape": list(bundle.latent_shape)})
    return result
