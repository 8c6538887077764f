"""``edgesplit predict BUNDLE IMAGES``: top-k of each image through the deployed path, torch-free.

A split bundle goes image -> ``DeviceEncoder`` -> payload bytes -> ``ServerDecoder`` in one process (the row
carries the payload size); a full bundle goes through ``DeviceModel``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from edgesplit.labels import names_for
from edgesplit.predict import display_path, top_entries

from .device import DeviceEncoder, DeviceModel, as_bundle
from .server import ServerDecoder

__all__ = ["predict_bundle"]

BATCH_SIZE = 16


def predict_bundle(bundle_dir: str | Path, images: Sequence[Path], *, root: Path | None = None, top_k: int = 5,
                   backend: str = "onnxruntime", device: str = "cpu", threads: int | None = None,
                   names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{target, kind, backend, device, rows}``; ``names`` (id -> display name) overrides the bundle's own."""
    bundle = as_bundle(bundle_dir)
    labels = bundle.labels
    shown = names_for(labels, names, bundle.manifest.get("label_names"))
    root = root if root is not None else Path(".")
    rows: list[dict[str, Any]] = []
    if bundle.kind == "split":
        with DeviceEncoder.open(bundle, backend=backend, device=device, threads=threads) as encoder, \
                ServerDecoder.open(bundle, backend=backend, device=device, threads=threads, top_k=top_k) as decoder:
            runner: Any = encoder
            for s in range(0, len(images), BATCH_SIZE):
                chunk = list(images[s:s + BATCH_SIZE])
                payloads = encoder.encode_batch(chunk)
                for path, payload, pred in zip(chunk, payloads, decoder.decode_batch(payloads)):
                    rows.append({"file": display_path(path, root),
                                 "top": top_entries(pred.indices, pred.probs, labels, shown),
                                 "payload_bytes": len(payload)})
    else:
        with DeviceModel.open(bundle, backend=backend, device=device, threads=threads, top_k=top_k) as model:
            runner = model
            for s in range(0, len(images), BATCH_SIZE):
                chunk = list(images[s:s + BATCH_SIZE])
                for path, pred in zip(chunk, model.predict_batch(chunk)):
                    rows.append({"file": display_path(path, root),
                                 "top": top_entries(pred.indices, pred.probs, labels, shown),
                                 "payload_bytes": None})
    return {"target": str(bundle.path), "kind": bundle.kind, "backend": runner.backend, "device": runner.device,
            "rows": rows}
