"""The report at the end of ``edgesplit train``: a summary table, ``report.png`` (loss, top-1 and, for split students,
rate in bytes per image, per epoch) and a confusion matrix of the validation subset (``confusion.png``), all read
back from the run directory (``log.jsonl``, ``metrics.json``, ``model.safetensors``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesplit.data import ImageFolder
from edgesplit.errors import ConfigError, DataError
from edgesplit.labels import names_for
from edgesplit.preprocess import Preprocess, eval_crop

from .checkpoint import load
from .engine import to_input
from .evaluate import select_indices

__all__ = ["REPORT_JSON", "REPORT_PNG", "CONFUSION_PNG", "epoch_records", "summarize", "format_summary",
           "confusion_matrix", "write_report"]

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
CONFUSION_PNG = "confusion.png"
MAX_CONFUSION_IMAGES = 5000


def epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    """The ``epoch`` records of ``log.jsonl``, the last one per epoch (a resumed run may repeat some)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no log.jsonl (not a finished edgesplit run directory)")
    by_epoch: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not a JSON line ({exc})") from exc
        if record.get("event") == "epoch":
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[k] for k in sorted(by_epoch)]


def _rate_bytes(record: dict[str, Any]) -> float | None:
    bits = (record.get("terms") or {}).get("rate")
    return None if bits is None else float(bits) / 8.0


def summarize(run_dir: Path) -> dict[str, Any]:
    """Epochs, best and final validation top-1, training images per second, time, and the last rate (bytes)."""
    run_dir = Path(run_dir)
    records = epoch_records(run_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    if not records:
        raise ConfigError(f"{run_dir}: log.jsonl has no finished epoch")
    best = max(records, key=lambda r: r["val_top1"])
    seconds = sum(float(r.get("epoch_s", 0.0)) for r in records)
    rates = [r["images_per_s"] for r in records if r.get("images_per_s") is not None]
    if not rates and metrics.get("train_images") and seconds > 0:
        rates = [metrics["train_images"] * len(records) / seconds]  # includes the per-epoch validation
    rate_bytes = [_rate_bytes(r) for r in records]
    return {
        "run": str(run_dir), "name": metrics.get("name"), "epochs": len(records),
        "best_top1": float(best["val_top1"]), "best_epoch": int(best["epoch"]),
        "final_top1": float(metrics.get("val_top1", records[-1]["val_top1"])),
        "val_images": metrics.get("val_images"), "train_images": metrics.get("train_images"),
        "images_per_s": float(np.mean(rates)) if rates else None,
        "time_s": float(metrics.get("train_time_s", seconds)),
        "rate_bytes": rate_bytes[-1] if rate_bytes[-1] is not None else None,
    }


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a two-column table."""
    rows = [("run", s["run"]), ("epochs", str(s["epochs"])),
            ("best top-1", f"{100 * s['best_top1']:.2f}% (epoch {s['best_epoch']})"),
            ("final top-1", f"{100 * s['final_top1']:.2f}%" + (f" on {s['val_images']} validation images"
                                                               if s.get("val_images") else "")),
            ("images/s", "n/a" if s["images_per_s"] is None else f"{s['images_per_s']:.1f} (training)"),
            ("time", f"{s['time_s']:.1f} s")]
    if s.get("rate_bytes") is not None:
        rows.append(("rate", f"{s['rate_bytes']:.0f} B per image (last epoch, from the rate term)"))
    for key, name in (("report_png", "plots"), ("confusion_png", "confusion")):
        if s.get(key):
            rows.append((name, s[key]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@torch.no_grad()
def confusion_matrix(checkpoint: Path, data_root: str | Path, *, batch_size: int = 64) -> dict[str, Any]:
    """Counts (true class x predicted class) of ``checkpoint`` on its own validation subset of ``data_root``."""
    model = load(checkpoint)
    info = model.edgesplit_info  # type: ignore[attr-defined]
    labels = [str(v) for v in info["labels"]]
    spec = Preprocess.from_dict(info["preprocess"])
    dataset = ImageFolder(data_root, classes=labels)
    idx = select_indices(dataset, "val", info, MAX_CONFUSION_IMAGES)
    if len(idx) == 0:
        raise DataError(f"{data_root}: the validation subset is empty")
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for s in range(0, len(idx), batch_size):
        chunk = [dataset.samples[int(i)] for i in idx[s:s + batch_size]]
        x = to_input(np.stack([np.array(eval_crop(smp.path, spec)) for smp in chunk]), spec)
        for smp, pred in zip(chunk, model(x).argmax(1).tolist()):
            counts[smp.label, pred] += 1
    return {"labels": labels, "names": names_for(labels, None, info.get("label_names")),
            "counts": counts.tolist(), "images": int(counts.sum()), "top1": float(np.trace(counts) / counts.sum())}


def _plot_curves(records: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    rates = [_rate_bytes(r) for r in records]
    panels = 3 if any(v is not None for v in rates) else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    axes[0].plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    axes[0].plot(epochs, [r["val_loss"] for r in records], "s-", label="validation (CE)")
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0].legend()
    axes[1].plot(epochs, [100 * r["val_top1"] for r in records], "o-", color="tab:green")
    axes[1].set(xlabel="epoch", ylabel="top-1 (%)", title="validation top-1")
    if panels == 3:
        axes[2].plot(epochs, rates, "o-", color="tab:red")
        axes[2].set(xlabel="epoch", ylabel="bytes per image", title="rate (training images)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_confusion(conf: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(conf["counts"])
    k = len(counts)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * k + 2.5), max(3.5, 0.5 * k + 2.0)))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), conf["names"], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), conf["names"], fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}: {100 * conf['top1']:.1f}% on {conf['images']} images")
    high = counts.max() / 2 if counts.size else 0
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if counts[i, j] > high else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str | Path, data_root: str | Path | None = None) -> dict[str, Any]:
    """Write ``report.png``, ``confusion.png`` and ``report.json`` into the run directory; returns the summary
    (with ``report_png``, ``confusion_png`` and ``confusion``). ``data_root``: the training directory (default: the
    one ``metrics.json`` names); without it, or without ``model.safetensors``, there is no confusion matrix."""
    run = Path(run_dir)
    summary = summarize(run)
    title = summary.get("name") or run.name
    _plot_curves(epoch_records(run), run / REPORT_PNG, title)
    summary["report_png"] = str(run / REPORT_PNG)
    metrics_path = run / "metrics.json"
    root = data_root or (json.loads(metrics_path.read_text()).get("data_root") if metrics_path.is_file() else None)
    model = run / "model.safetensors"
    if root and Path(root).is_dir() and model.is_file():
        conf = confusion_matrix(model, root)
        _plot_confusion(conf, run / CONFUSION_PNG, title)
        summary["confusion"] = conf
        summary["confusion_png"] = str(run / CONFUSION_PNG)
    (run / REPORT_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
