"""``edgesplit predict CHECKPOINT IMAGES``: top-k of each image with torch; a split student goes through its real
bitstream (symbols -> codec -> payload -> decode), so the row's payload size is what a device would send."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from edgesplit._checks import positive_int
from edgesplit.interfaces import SplitModel
from edgesplit.labels import names_for
from edgesplit.predict import display_path, top_entries
from edgesplit.preprocess import Preprocess, eval_crop

from .checkpoint import load
from .engine import to_input
from .evaluate import file_fingerprint, logits_through_payloads

__all__ = ["predict_checkpoint"]

BATCH_SIZE = 16


@torch.no_grad()
def predict_checkpoint(path: str | Path, images: Sequence[Path], *, root: Path | None = None, top_k: int = 5,
                       names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{target, kind, backend: 'torch', device: 'cpu', rows}``; ``names`` (id -> name) overrides the checkpoint's."""
    positive_int(top_k, "top_k")
    model = load(path)
    info = model.edgesplit_info  # type: ignore[attr-defined]
    labels = [str(v) for v in info["labels"]]
    shown = names_for(labels, names, info.get("label_names"))
    spec = Preprocess.from_dict(info["preprocess"])
    split = isinstance(model, SplitModel)
    codec = model.codec() if split else None  # type: ignore[operator]
    fingerprint = file_fingerprint(path)
    root = root if root is not None else Path(".")
    k = min(top_k, len(labels))
    rows: list[dict[str, Any]] = []
    for s in range(0, len(images), BATCH_SIZE):
        chunk = list(images[s:s + BATCH_SIZE])
        x = to_input(np.stack([np.array(eval_crop(p, spec)) for p in chunk]), spec)
        sizes: list[int | None] = [None] * len(chunk)
        if split:
            symbols = model.encode_symbols(x).numpy()  # type: ignore[operator]
            logits, coded = logits_through_payloads(model, codec, symbols, fingerprint)
            sizes = list(coded)
        else:
            logits = model(x)
        probs = torch.softmax(logits.double(), dim=1).numpy()
        for p, row_probs, size in zip(chunk, probs, sizes):
            order = np.argsort(-row_probs, kind="stable")[:k]
            rows.append({"file": display_path(p, root),
                         "top": top_entries([int(i) for i in order], [row_probs[i] for i in order], labels, shown),
                         "payload_bytes": size})
    return {"target": str(path), "kind": "split" if split else "full", "backend": "torch", "device": "cpu",
            "rows": rows}
