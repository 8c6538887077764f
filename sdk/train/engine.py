"""The training/distillation loop: data, objective, optimizer and schedule from a ``TrainConfig``.

Progress bar with loss and throughput, JSONL log, a resumable state after every epoch (a kill loses at most
the epoch in progress), checkpoints as safetensors with the recipe in their metadata, and a final metrics file.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from edgesplit.config import TrainConfig, to_dict
from edgesplit.data import ImageCache, ImageFolder, stratified_split
from edgesplit.errors import ConfigError, DataError
from edgesplit.preprocess import Preprocess
from edgesplit.registry import create, get

from . import losses as _losses  # noqa: F401  (registers the built-in losses)
from .checkpoint import atomic_write, build_model, load, load_state, save_checkpoint, save_state
from .mixing import mix_batch

__all__ = ["Trainer", "train", "model_outputs", "evaluate_cache", "to_input"]

log = logging.getLogger(__name__)


def to_input(batch: np.ndarray, spec: Preprocess, channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC numpy batch -> normalized float NCHW tensor (the same math as the exported graphs)."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def model_outputs(model: nn.Module, x: torch.Tensor, keep: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """``{'logits': ..., <stage>: ..., ...}`` from a backbone or a student with ``forward_train``."""
    keep = set(keep) - {"logits"}
    fn = getattr(model, "forward_train", None)
    if fn is not None:
        return fn(x, keep=keep)
    logits, kept = model.forward_stages(x, keep=keep)  # type: ignore[operator]
    return {"logits": logits, **kept}


@torch.no_grad()
def evaluate_cache(model: nn.Module, cache: ImageCache, spec: Preprocess, batch_size: int = 128,
                   channels_last: bool = False) -> dict[str, float]:
    """Top-1 and cross-entropy of ``model`` on a cached split with evaluation preprocessing."""
    was = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for xb, yb in cache.eval_batches(batch_size, spec):
        logits = model(to_input(xb, spec, channels_last))
        y = torch.from_numpy(yb)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += len(yb)
    model.train(was)
    return {"top1": correct / total, "loss": loss_sum / total, "images": total}


def _build_loss(cfg: Any, student: nn.Module, teacher: nn.Module | None, source: str, i: int) -> nn.Module:
    factory = get("loss", cfg.name)
    params = dict(cfg.params)
    accepted = inspect.signature(factory).parameters
    if "student" in accepted:
        params["student"] = student
    if "teacher" in accepted:
        params["teacher"] = teacher
    try:
        loss = create("loss", cfg.name, **params)
    except ConfigError as exc:
        raise ConfigError(f"{source}: losses[{i}] ({cfg.name}): {exc}") from exc
    if loss.teacher_keys and teacher is None:
        raise ConfigError(f"{source}: losses[{i}] ({cfg.name}) distills from a teacher, but no teacher is set")
    return loss


def _lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    s = cfg.schedule
    total = cfg.epochs * steps_per_epoch
    warm = int(s.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if s.name == "constant":
        return 1.0
    if s.name == "step":
        epoch = step // steps_per_epoch
        return s.step_gamma ** sum(epoch >= e for e in s.step_epochs)
    progress = (step - warm) / max(1, total - warm)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class _Progress:
    """A tqdm bar when stderr is a terminal or tqdm is present; plain lines otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=2.0)
            except ImportError:
                pass

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Runs one ``TrainConfig`` into an output directory."""

    def __init__(self, config: TrainConfig, out: str | Path, *, data_root: str | None = None,
                 source: str = "<config>", progress: bool = True) -> None:
        self.cfg = config
        self.out = Path(out)
        self.source = source
        self.progress = progress
        root = data_root or config.data.root
        if root is None:
            raise ConfigError(f"{source}: data.root is not set; pass the dataset directory with --data")
        self.data_root = root
        self.spec = Preprocess.for_size(config.data.image_size, config.data.resize)

    # -- setup -------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.teacher = load(cfg.teacher) if cfg.teacher else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        labels_from = getattr(self.teacher, "edgesplit_info", {}).get("labels") if self.teacher else None
        dataset = ImageFolder(self.data_root, classes=labels_from, limit_per_class=cfg.data.limit_per_class)
        self.labels = dataset.classes
        train_idx, val_idx = stratified_split(dataset.labels, cfg.data.val_fraction, cfg.data.split_seed)
        log.info("decoding %d training and %d validation images", len(train_idx), len(val_idx))
        self.train_cache = ImageCache(dataset, train_idx, on_error=cfg.data.on_error)
        self.val_cache = ImageCache(dataset, val_idx, on_error=cfg.data.on_error)
        params = dict(cfg.model.params)
        if cfg.model.kind == "backbone":
            params.setdefault("num_classes", len(self.labels))
        if "teacher" in inspect.signature(get(cfg.model.kind, cfg.model.name)).parameters and cfg.teacher:
            params.setdefault("teacher", cfg.teacher)
        self.model_config = {"kind": cfg.model.kind, "name": cfg.model.name, "params": params}
        self.model = build_model(self.model_config, self.source)
        # a model may resolve its recipe (e.g. record the teacher file's hash); checkpoints store what it reports
        self.model_config["params"] = dict(getattr(self.model, "recipe_params", params))
        if cfg.init:
            init = load(cfg.init, eval_mode=False)
            missing, unexpected = self.model.load_state_dict(init.state_dict(), strict=False)
            log.info("initialized from %s (%d missing, %d unexpected keys)", cfg.init, len(missing), len(unexpected))
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
        self.frozen: list[nn.Module] = []
        for prefix in cfg.freeze:
            hits = [(n, m) for n, m in self.model.named_modules() if n == prefix]
            if not hits:
                raise ConfigError(f"{self.source}: freeze: the model has no module named {prefix!r}")
            for _, m in hits:
                m.requires_grad_(False)
                self.frozen.append(m)
        self.losses = nn.ModuleList(
            _build_loss(lc, self.model, self.teacher, self.source, i) for i, lc in enumerate(cfg.losses)
        )
        self.weights = [lc.weight for lc in cfg.losses]
        self.mixing = cfg.data.mixup > 0 or cfg.data.cutmix > 0
        if self.mixing:
            hard = [lc.name for lc, l in zip(cfg.losses, self.losses) if l.needs_class_labels]
            if hard:
                raise ConfigError(f"{self.source}: losses {hard} need class labels, which data.mixup / data.cutmix "
                                  "replace with mixed targets; drop one or the other")
        self.student_keys = set().union(*(l.student_keys for l in self.losses))
        self.teacher_keys = set().union(*(l.teacher_keys for l in self.losses))
        self.optimizer = self._optimizer()
        self.set_progress = getattr(self.model, "set_progress", None)

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optimizer
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        named += [(f"loss.{n}", p) for n, p in self.losses.named_parameters() if p.requires_grad]
        for n, p in named:
            lr = o.lr
            for prefix, plr in o.param_lr.items():
                if n.startswith(prefix):
                    lr = plr
            wd = 0.0 if p.ndim <= 1 or getattr(p, "no_weight_decay", False) else o.weight_decay
            groups.setdefault((lr, wd), []).append(p)
        param_groups = [{"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        if not param_groups:
            raise ConfigError(f"{self.source}: nothing to train (every parameter is frozen)")
        if o.name == "sgd":
            return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
        if o.name == "adam":
            return torch.optim.Adam(param_groups, lr=o.lr, betas=o.betas)
        return torch.optim.AdamW(param_groups, lr=o.lr, betas=o.betas)

    def _train_size(self, epoch: int) -> int:
        size = self.cfg.data.image_size
        for start, s in sorted(self.cfg.data.train_sizes):
            if epoch >= start:
                size = s
        return size

    def _set_train_mode(self) -> None:
        self.model.train()
        self.losses.train()
        for m in self.frozen:
            m.eval()  # frozen parts keep their BatchNorm statistics

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _save(self, path: Path, extra: dict[str, Any]) -> None:
        save_checkpoint(self.model, path, model_config=self.model_config, labels=self.labels,
                        preprocess=self.spec.to_dict(), extra={"train_config": to_dict(self.cfg), **extra})

    # -- loop --------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / "state.safetensors"
        if not resume and state_path.exists():
            raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        self._setup()
        atomic_write(self.out / "config.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
        start_epoch, elapsed, history = 0, 0.0, []
        if resume and state_path.exists():
            meta = load_state(state_path, model=self.model, optimizer=self.optimizer, extra_modules=self.losses)
            start_epoch, elapsed, history = meta["epoch"] + 1, meta["elapsed_s"], meta["history"]
            log.info("resuming %s after epoch %d", self.out, meta["epoch"] + 1)
        steps_per_epoch = len(self.train_cache) // cfg.batch_size
        if steps_per_epoch == 0:
            raise DataError(f"{self.data_root}: {len(self.train_cache)} training images, fewer than batch_size={cfg.batch_size}")
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            size = self._train_size(epoch)
            rng = np.random.default_rng([cfg.seed, epoch])
            mix_rng = np.random.default_rng([cfg.seed, epoch, 1])  # its own stream: the crops stay those of a plain run
            self._set_train_mode()
            bar = _Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs} @{size}px", self.progress)
            run_loss, n_seen, terms_sum = 0.0, 0, np.zeros(len(self.losses))
            batches = self.train_cache.train_batches(cfg.batch_size, size, rng, (cfg.data.scale_min, 1.0), cfg.data.hflip)
            for i, (xb, yb) in enumerate(batches):
                step = epoch * steps_per_epoch + i
                factor = _lr_factor(cfg, step, steps_per_epoch)
                for g in self.optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                if self.set_progress is not None:  # estimators whose shape follows training progress (ReSTE)
                    self.set_progress(step / (cfg.epochs * steps_per_epoch))
                x, y = to_input(xb, self.spec, cfg.channels_last), torch.from_numpy(yb)
                if self.mixing:
                    x, y = mix_batch(x, y, len(self.labels), mix_rng, mixup=cfg.data.mixup, cutmix=cfg.data.cutmix)
                s_out = model_outputs(self.model, x, self.student_keys)
                t_out = None
                if self.teacher is not None and self.teacher_keys:
                    with torch.no_grad():
                        t_out = model_outputs(self.teacher, x, self.teacher_keys)
                terms = [l(s_out, t_out, y) for l in self.losses]
                loss = sum(w * t for w, t in zip(self.weights, terms))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1} step {i}; lower the lr")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], cfg.grad_clip)
                self.optimizer.step()
                run_loss += float(loss.detach()) * len(yb)
                n_seen += len(yb)
                terms_sum += np.array([float(t.detach()) for t in terms]) * len(yb)
                img_s = n_seen / max(1e-9, time.time() - t0)
                bar.update(1, loss=f"{run_loss / n_seen:.3f}", img_s=f"{img_s:.0f}")
                if i % cfg.log_every == 0:
                    self._log({"event": "step", "epoch": epoch + 1, "step": i, "loss": float(loss.detach()),
                               "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": round(img_s, 1),
                               "terms": {lc.name: float(t.detach()) for lc, t in zip(cfg.losses, terms)}})
            bar.close()
            val = evaluate_cache(self.model, self.val_cache, self.spec, channels_last=cfg.channels_last)
            epoch_time = time.time() - t0
            elapsed += epoch_time
            record = {"event": "epoch", "epoch": epoch + 1, "train_size": size, "train_loss": run_loss / n_seen,
                      "terms": {lc.name: v / n_seen for lc, v in zip(cfg.losses, terms_sum)},
                      "val_top1": val["top1"], "val_loss": val["loss"], "epoch_s": round(epoch_time, 1)}
            history.append(record)
            self._log(record)
            log.info("epoch %d/%d: train loss %.4f, val top-1 %.4f (%.0f s)", epoch + 1, cfg.epochs,
                     record["train_loss"], val["top1"], epoch_time)
            self._save(self.out / "last.safetensors", {"epoch": epoch + 1})
            save_state(state_path, model=self.model, optimizer=self.optimizer, extra_modules=self.losses,
                       epoch=epoch, info={"elapsed_s": elapsed, "history": history})
        final = evaluate_cache(self.model, self.val_cache, self.spec, channels_last=cfg.channels_last)
        metrics = {"name": cfg.name, "val_top1": final["top1"], "val_loss": final["loss"], "val_images": final["images"],
                   "train_images": len(self.train_cache), "epochs": cfg.epochs, "train_time_s": round(elapsed, 1),
                   "params": sum(p.numel() for p in self.model.parameters()), "labels": self.labels,
                   "data_root": str(self.data_root), "split": {"val_fraction": cfg.data.val_fraction,
                                                              "seed": cfg.data.split_seed}}
        self._save(self.out / "model.safetensors", {"metrics": metrics})
        atomic_write(self.out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
        return metrics


def train(config: TrainConfig, out: str | Path, *, data_root: str | None = None, resume: bool = False,
          source: str = "<config>", progress: bool = True) -> dict[str, Any]:
    """Train ``config`` into ``out``; returns the final metrics."""
    return Trainer(config, out, data_root=data_root, source=source, progress=progress).run(resume=resume)
