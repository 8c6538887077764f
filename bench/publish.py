"""Publish a finished training run: fp16 weights under samples/weights/, its config and log beside them, and a
results JSON under bench/results/ with top-1 (re-measured from the committed fp16 file), params, MACs and time.

    python bench/publish.py runs/teacher_resnet18 --name teacher_resnet18 --data DATASET_DIR --result teacher
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def select_resize(model: torch.nn.Module, data: str, size: int, candidates: list[int], n: int = 1500) -> dict:
    """Pick the evaluation resize (shorter side before the center crop) on training-split images, never on the
    validation split that is reported: random-resized-crop training makes objects look larger than a plain
    center crop does, so a tighter crop at test time usually helps (Touvron et al., "Fixing the train-test
    resolution discrepancy")."""
    import numpy as np

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


def publish(run: Path, name: str, data: str, result: str | None, resize_candidates: list[int] | None = None) -> dict:
    from edgesplit.plugins.backbones import count_macs
    from edgesplit.plugins.quant.binary import binary_layers
    from edgesplit.train import load, save_checkpoint
    from edgesplit.train.evaluate import evaluate_checkpoint

    weights_dir = REPO / "samples" / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    model = load(run / "model.safetensors")
    info = model.edgesplit_info
    dest = weights_dir / f"{name}.safetensors"
    extra = {k: v for k, v in info.items() if k not in ("format", "model", "labels", "preprocess")}
    selection = None
    if resize_candidates:
        selection = select_resize(model, data, info["preprocess"]["size"], resize_candidates)
        info["preprocess"] = {**info["preprocess"], "resize": selection["chosen"]}
        extra["eval_resize_selection"] = selection
    recipe = dict(info["model"])
    if "teacher" in recipe.get("params", {}):
        # students name their teacher relative to their own file, so published weights load from anywhere
        teacher = Path(recipe["params"]["teacher"]).resolve()
        recipe["params"] = {**recipe["params"], "teacher": os.path.relpath(teacher, weights_dir)}
    # Binary students store their 1-bit layers packed; the few float tensors left (stem, shortcuts, BatchNorm,
    # thresholds, classifier: ~3% of the parameters) stay float32, since fp16 thresholds flip activations' signs
    # (measured: -0.8 points for the STE student in fp16). QAT students stay float32 too: fp16 latent weights and
    # step sizes move weights across rounding boundaries of the learned grid (measured: INT4 80.15% -> 79.30%).
    quantized = bool(binary_layers(model)) or info["model"].get("name") == "qat"
    dtype = None if quantized else torch.float16
    save_checkpoint(model, dest, model_config=recipe, labels=info["labels"], preprocess=info["preprocess"],
                    extra=extra, dtype=dtype)
    shutil.copyfile(run / "config.yaml", weights_dir / f"{name}.yaml")
    shutil.copyfile(run / "log.jsonl", weights_dir / f"{name}.log.jsonl")
    size = info["preprocess"]["size"]
    macs_fn = getattr(model, "macs_report", None)
    macs = count_macs(model, torch.zeros(1, 3, size, size))
    ev = evaluate_checkpoint(dest, data, split="val")
    metrics = info.get("metrics", {})
    out = {
        "name": name,
        "checkpoint": str(dest.relative_to(REPO)),
        "config": str((weights_dir / f"{name}.yaml").relative_to(REPO)),
        "log": str((weights_dir / f"{name}.log.jsonl").relative_to(REPO)),
        "model": info["model"],
        "top1": ev["top1"],
        "val_images": ev["images"],
        "top1_fp32_run": metrics.get("val_top1"),
        "params": sum(p.numel() for p in model.parameters()),
        "macs": macs,
        "input_size": size,
        "train_time_s": metrics.get("train_time_s"),
        "epochs": metrics.get("epochs"),
        "file_bytes": dest.stat().st_size,
        "split": metrics.get("split"),
        "command": (f"edgesplit train configs/{name}.yaml --out {run} --data DATASET_DIR"
                    if (REPO / "configs" / f"{name}.yaml").is_file() else f"bench/train_entropic.sh {name.split('_', 1)[-1]} DATASET_DIR"),
    }
    if selection is not None:
        out["eval_resize_selection"] = selection
    if macs_fn is not None:
        out["macs_report"] = macs_fn(size)
    if result:
        (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
        (REPO / "bench" / "results" / f"{result}.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="run directory written by edgesplit train")
    ap.add_argument("--name", required=True, help="file stem under samples/weights/")
    ap.add_argument("--data", required=True, help="the ImageFolder directory the run was trained on (its val split is used)")
    ap.add_argument("--result", help="write bench/results/RESULT.json")
    ap.add_argument("--resize-candidates", help="comma-separated evaluation resizes to choose from on training images")
    args = ap.parse_args()
    cands = [int(v) for v in args.resize_candidates.split(",")] if args.resize_candidates else None
    out = publish(args.run, args.name, args.data, args.result, cands)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
