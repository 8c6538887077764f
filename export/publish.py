"""Publish a finished training run: fp16 weights (float32 where fp16 would move a quantized model's answers), the
run's recipe and log beside them, and a results JSON with top-1 re-measured from the published file.

With a staged run (a directory holding ``plan.json``), each sweep point's last stage is published as ``NAME_<value>``
(or NAME with ``{value}`` replaced, e.g. ``entropic_b{value}`` -> ``entropic_b2p5e-4``; dots become ``p``), and the
earlier stages' recipes and logs go beside it as ``NAME.<stage>.yaml`` / ``NAME.<stage>.log.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesplit.errors import ConfigError

__all__ = ["publish_run", "publish"]


def _select_resize(model: torch.nn.Module, data: str, size: int, candidates: list[int], n: int = 1500) -> dict:
    """Pick the evaluation resize (shorter side before the center crop) on training-split images, never on the
    validation subset that is reported: random-resized-crop training makes objects look larger than a plain
    center crop does, so a tighter crop at test time usually helps (Touvron et al., "Fixing the train-test
    resolution discrepancy")."""
    from edgesplit.data import ImageCache, ImageFolder, stratified_split
    from edgesplit.preprocess import Preprocess
    from edgesplit.train import evaluate_cache

    info = model.edgesplit_info
    split = info.get("train_config", {}).get("data", {})
    ds = ImageFolder(data, classes=info["labels"])
    train_idx, _ = stratified_split(ds.labels, split.get("val_fraction", 0.1), split.get("split_seed", 0))
    pick = np.sort(np.random.default_rng(1).permutation(train_idx)[:n])
    cache = ImageCache(ds, pick)
    scores = {r: evaluate_cache(model, cache, Preprocess.for_size(size, r))["top1"] for r in candidates}
    return {"chosen": max(scores, key=lambda r: (scores[r], -abs(r - candidates[0]))), "train_top1": scores,
            "images": len(pick)}


def publish(run: str | Path, name: str, data: str, *, dest: str | Path = "samples/weights",
            result: str | Path | None = None, resize_candidates: list[int] | None = None,
            earlier_stages: list[Path] | None = None) -> dict[str, Any]:
    """Publish one run directory (``model.safetensors``, ``config.yaml``, ``log.jsonl``) as ``dest/NAME.*``."""
    from edgesplit.registry import create
    from edgesplit.train import load, save_checkpoint
    from edgesplit.train.evaluate import evaluate_checkpoint

    run, dest = Path(run), Path(dest)
    for f in ("model.safetensors", "config.yaml", "log.jsonl"):
        if not (run / f).is_file():
            raise ConfigError(f"{run}: not a finished run (no {f}); train it to the end first")
    dest.mkdir(parents=True, exist_ok=True)
    model = load(run / "model.safetensors")
    info = model.edgesplit_info
    hook = create("exporter", "publish")  # the quant plugin's: MACs, and which students keep float32 weights
    target = dest / f"{name}.safetensors"
    extra = {k: v for k, v in info.items() if k not in ("format", "model", "labels", "preprocess")}
    selection = None
    if resize_candidates:
        selection = _select_resize(model, data, info["preprocess"]["size"], resize_candidates)
        info["preprocess"] = {**info["preprocess"], "resize": selection["chosen"]}
        extra["eval_resize_selection"] = selection
    recipe = dict(info["model"])
    if "teacher" in recipe.get("params", {}):
        # students name their teacher relative to their own file, so published weights load from anywhere
        teacher = Path(recipe["params"]["teacher"]).resolve()
        recipe["params"] = {**recipe["params"], "teacher": os.path.relpath(teacher, dest.resolve())}
    dtype = None if hook.keeps_float32(model, info) else torch.float16
    save_checkpoint(model, target, model_config=recipe, labels=info["labels"], preprocess=info["preprocess"],
                    extra=extra, dtype=dtype)
    shutil.copyfile(run / "config.yaml", dest / f"{name}.yaml")
    shutil.copyfile(run / "log.jsonl", dest / f"{name}.log.jsonl")
    for stage in earlier_stages or []:
        shutil.copyfile(stage / "config.yaml", dest / f"{name}.{stage.name}.yaml")
        shutil.copyfile(stage / "log.jsonl", dest / f"{name}.{stage.name}.log.jsonl")
    size = info["preprocess"]["size"]
    ev = evaluate_checkpoint(target, data, subset="val")
    metrics = info.get("metrics", {})
    out: dict[str, Any] = {
        "name": name, "checkpoint": str(target), "config": str(dest / f"{name}.yaml"),
        "log": str(dest / f"{name}.log.jsonl"), "model": info["model"], "top1": ev["top1"],
        "val_images": ev["images"], "top1_fp32_run": metrics.get("val_top1"),
        "params": sum(p.numel() for p in model.parameters()),
        "macs": hook.macs(model, size), "input_size": size,
        "train_time_s": metrics.get("train_time_s"), "epochs": metrics.get("epochs"),
        "file_bytes": target.stat().st_size, "dtype": "float32" if dtype is None else "float16",
        "split": metrics.get("split"),  # the training run's train/val partition (val_fraction, seed)
    }
    if selection is not None:
        out["eval_resize_selection"] = selection
    macs_fn = getattr(model, "macs_report", None)
    if macs_fn is not None:
        out["macs_report"] = macs_fn(size)
    if result:
        path = Path(result)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.replace(path)
    return out


def publish_run(run: str | Path, name: str, data: str, **kw: Any) -> list[dict[str, Any]]:
    """Publish a run directory, or every sweep point's last stage of a staged run (``plan.json``)."""
    run = Path(run)
    plan_file = run / "plan.json"
    if not plan_file.is_file():
        return [publish(run, name, data, **kw)]
    plan = json.loads(plan_file.read_text())
    rows = plan["runs"]
    if not all(r["done"] for r in rows):
        todo = [r["out"] for r in rows if not r["done"]]
        raise ConfigError(f"{run}: {len(todo)} stage(s) not finished ({todo[0]} first); resume the training first")
    points = plan["points"] or [None]
    out = []
    result = kw.pop("result", None)
    for point in points:
        chain = [Path(r["out"]) for r in rows if r["point"] in (None, point)]
        value = point.split("=", 1)[1].replace(".", "p") if point else ""  # 2.5e-4 -> 2p5e-4 (no dots in stems)
        stem = name.replace("{value}", value) if "{value}" in name else (f"{name}_{value}" if point else name)
        res = None
        if result:
            res = Path(str(result).replace("{value}", value)) if "{value}" in str(result) or not point else \
                Path(result).with_name(f"{Path(result).stem}_{value}{Path(result).suffix}")
        out.append(publish(chain[-1], stem, data, result=res, earlier_stages=chain[:-1], **kw))
    return out
