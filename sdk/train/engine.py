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
from edgesplit.preprocess import PIXEL_SCALE, Preprocess, normalization
from edgesplit.registry import available, create, get

from . import losses as _losses  # noqa: F401  (registers the built-in losses)
from .checkpoint import atomic_write, build_model, load, load_state, save_checkpoint, save_state
from .hardware import close_process_group, resolve_hardware
from .mixing import mix_batch

__all__ = ["Trainer", "train", "model_outputs", "evaluate_cache", "normalize_image", "to_input"]

log = logging.getLogger(__name__)


def normalize_image(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW, the steps of ``edgesplit.preprocess.normalization``; the exported graphs run this.

    The cast comes before the transpose so no uint8 tensor flows between ops (TensorRT takes UINT8 only at network
    inputs and outputs).
    """
    x = image.to(torch.float32).permute(0, 3, 1, 2) / PIXEL_SCALE
    return (x - mean) / std


def to_input(batch: np.ndarray, spec: Preprocess, channels_last: bool = False,
             device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 NHWC numpy batch -> normalized float NCHW tensor (the same math as the exported graphs).

    The uint8 batch moves to ``device`` first (a quarter of the float bytes), normalization runs there.
    """
    if not batch.flags.writeable:  # arrays viewing PIL images are read-only; torch needs a writable buffer
        batch = batch.copy()
    x = torch.from_numpy(batch)
    if device is not None and torch.device(device).type != "cpu":
        x = x.to(device, non_blocking=True)
    mean, std = (torch.from_numpy(a).to(x.device) for a in normalization(spec))
    x = normalize_image(x, mean, std)
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
                   channels_last: bool = False, device: torch.device | str | None = None) -> dict[str, float]:
    """Top-1 and cross-entropy of ``model`` on a cached split with evaluation preprocessing (float32, as deployed)."""
    was = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for xb, yb in cache.eval_batches(batch_size, spec):
        x = to_input(xb, spec, channels_last, device)
        logits = model(x).float()
        y = torch.from_numpy(yb).to(logits.device)
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


def _float_outputs(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs of an autocast forward as float32: every loss term is computed in float32."""
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in out.items()}


class _TeacherCache:
    """The frozen teacher's outputs per training image, kept when they do not depend on augmentation."""

    LIMIT_BYTES = 4 << 30

    def __init__(self) -> None:
        self.store: dict[int, dict[str, torch.Tensor]] = {}
        self.bytes = 0

    def get(self, idx: np.ndarray) -> dict[str, torch.Tensor] | None:
        if not all(int(i) in self.store for i in idx):
            return None
        keys = self.store[int(idx[0])].keys()
        return {k: torch.stack([self.store[int(i)][k] for i in idx]).float() for k in keys}

    def put(self, idx: np.ndarray, out: dict[str, torch.Tensor], total_images: int) -> None:
        for j, i in enumerate(idx):
            if int(i) in self.store:
                continue
            entry = {k: v[j].detach().to("cpu", torch.float16) for k, v in out.items()}
            self.store[int(i)] = entry
            self.bytes += sum(t.numel() * 2 for t in entry.values())
        projected = self.bytes / max(1, len(self.store)) * total_images
        if projected > self.LIMIT_BYTES:
            raise ConfigError(f"teacher_cache: the teacher's outputs would take {projected / 2**30:.1f} GiB for "
                              f"{total_images} images (limit {self.LIMIT_BYTES >> 30} GiB); distill from fewer or "
                              "smaller teacher outputs, or set teacher_cache: false")


class Trainer:
    """Runs one ``TrainConfig`` into an output directory (one process, or one rank of a torchrun group)."""

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
        hw = self.hw = resolve_hardware(cfg.device, cfg.precision, cfg.channels_last, cfg.threads, self.source)
        torch.set_num_threads(hw.threads)
        hw.dist.init(hw.device)
        if cfg.batch_size % hw.dist.world_size:
            raise ConfigError(f"{self.source}: batch_size {cfg.batch_size} is the global batch and must divide "
                              f"evenly over the {hw.dist.world_size} processes")
        self.device = hw.device
        torch.manual_seed(cfg.seed)
        self.teacher = load(cfg.teacher) if cfg.teacher else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        labels_from = getattr(self.teacher, "edgesplit_info", {}).get("labels") if self.teacher else None
        # listing the folders is cheap; images are decoded only after the model, its init and losses check out
        dataset = ImageFolder(self.data_root, classes=labels_from, limit_per_class=cfg.data.limit_per_class)
        self.labels = dataset.classes
        params = dict(cfg.model.params)
        if cfg.model.kind == "backbone" or cfg.model.name in available("backbone"):  # a full student is a backbone
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
        self._dry_run()
        self.model.to(self.device)
        self.losses.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher = self.teacher.to(memory_format=torch.channels_last)
        hw.dist.broadcast_module(self.model)
        hw.dist.broadcast_module(self.losses)
        self.optimizer = self._optimizer()
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = hw.grad_scaler()
        self.set_progress = getattr(self.model, "set_progress", None)
        self.teacher_cache = _TeacherCache() if cfg.teacher_cache and self.teacher is not None else None
        self.workers = cfg.data.workers if cfg.data.workers is not None else (os.cpu_count() or 1)
        train_idx, val_idx = stratified_split(dataset.labels, cfg.data.val_fraction, cfg.data.split_seed)
        log.info("decoding %d training and %d validation images", len(train_idx), len(val_idx))
        self.train_cache = ImageCache(dataset, train_idx, on_error=cfg.data.on_error, workers=self.workers)
        self.val_cache = ImageCache(dataset, val_idx, on_error=cfg.data.on_error, workers=self.workers)

    def _dry_run(self) -> None:
        """One forward of two blank images through model, teacher and losses, so a model-level mistake (a cut
        that does not fit, a class count other than the teacher's) is a ConfigError before any image is decoded."""
        size = self._train_size(0)
        x = torch.zeros(2, 3, size, size)
        y = torch.zeros(2, dtype=torch.int64)
        loss_state = {k: v.clone() for k, v in self.losses.state_dict().items()}
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                s_out = model_outputs(self.model, x, self.student_keys)
                t_out = model_outputs(self.teacher, x, self.teacher_keys) if self.teacher is not None else None
                if t_out is not None and s_out["logits"].shape[-1] != t_out["logits"].shape[-1]:
                    raise ConfigError(f"{self.source}: the model has {s_out['logits'].shape[-1]} outputs but the "
                                      f"teacher {self.cfg.teacher} has {t_out['logits'].shape[-1]} classes; "
                                      "set the model's num_classes to the teacher's")
                if s_out["logits"].shape[-1] != len(self.labels):
                    raise ConfigError(f"{self.source}: the model has {s_out['logits'].shape[-1]} outputs but the "
                                      f"data has {len(self.labels)} classes ({self.data_root})")
                for i, l in enumerate(self.losses):
                    l(s_out, t_out, y)
        except (RuntimeError, ValueError, KeyError, IndexError) as exc:
            raise ConfigError(f"{self.source}: the model, teacher and losses do not fit together at "
                              f"{size} px: {type(exc).__name__}: {str(exc)[:300]}") from exc
        finally:
            self.model.train(was)
            self.losses.load_state_dict(loss_state)

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
        if not self.hw.dist.main:
            return
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _save(self, path: Path, extra: dict[str, Any]) -> None:
        save_checkpoint(self.model, path, model_config=self.model_config, labels=self.labels,
                        preprocess=self.spec.to_dict(), extra={"train_config": to_dict(self.cfg), **extra})

    # -- one step ----------------------------------------------------------------------------------------
    def _teacher_outputs(self, x: torch.Tensor, idx: np.ndarray) -> dict[str, torch.Tensor] | None:
        if self.teacher is None or not self.teacher_keys:
            return None
        if self.teacher_cache is not None:
            cached = self.teacher_cache.get(idx)
            if cached is not None:
                return {k: v.to(self.device, non_blocking=True) for k, v in cached.items()}
        with torch.no_grad(), self.hw.autocast():  # frozen: no graph, in the run's precision
            t_out = _float_outputs(model_outputs(self.teacher, x, self.teacher_keys))
        if self.teacher_cache is not None:
            self.teacher_cache.put(idx, t_out, len(self.train_cache))
        return t_out

    def _step(self, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, where: str) -> tuple[torch.Tensor, list]:
        t_out = self._teacher_outputs(x, idx)
        with self.hw.autocast():
            s_out = model_outputs(self.model, x, self.student_keys)
        s_out = _float_outputs(s_out)  # losses, the rate term and its likelihoods in float32
        terms = [l(s_out, t_out, y) for l in self.losses]
        loss = sum(w * t for w, t in zip(self.weights, terms))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at {where}; lower the lr")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self.hw.dist.all_reduce_gradients(self.trainable)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.detach(), [t.detach() for t in terms]

    # -- loop --------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        state_path = self.out / "state.safetensors"
        if not resume and state_path.exists():
            raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        self._setup()
        return self._run(resume, state_path)

    def _run(self, resume: bool, state_path: Path) -> dict[str, Any]:
        cfg, hw = self.cfg, self.hw
        main = hw.dist.main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "config.yaml",
                         lambda tmp: tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
        hw.dist.barrier()
        start_epoch, elapsed, history = 0, 0.0, []
        if resume and state_path.exists():
            meta = load_state(state_path, model=self.model, optimizer=self.optimizer, extra_modules=self.losses)
            start_epoch, elapsed, history = meta["epoch"] + 1, meta["elapsed_s"], meta["history"]
            log.info("resuming %s after epoch %d", self.out, meta["epoch"] + 1)
        steps_per_epoch = len(self.train_cache) // cfg.batch_size
        if steps_per_epoch == 0:
            raise DataError(f"{self.data_root}: {len(self.train_cache)} training images, fewer than batch_size={cfg.batch_size}")
        self._log({"event": "start", **hw.describe(), "data_workers": self.workers, "global_batch": cfg.batch_size,
                   "batch_per_process": cfg.batch_size // hw.dist.world_size, "train_images": len(self.train_cache),
                   "val_images": len(self.val_cache), "start_epoch": start_epoch + 1, "epochs": cfg.epochs,
                   "teacher_cache": self.teacher_cache is not None})
        log.info("training on %s, %s, %d thread(s) x %d process(es), channels_last=%s", hw.device, hw.precision,
                 hw.threads, hw.dist.world_size, cfg.channels_last)
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            size = self._train_size(epoch)
            mix_rng = np.random.default_rng([cfg.seed, epoch, 1, hw.dist.rank])
            self._set_train_mode()
            bar = _Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs} @{size}px", self.progress and main)
            run_loss, n_seen, terms_sum = 0.0, 0, np.zeros(len(self.losses))
            batches = self.train_cache.train_batches(
                cfg.batch_size, size, cfg.seed, epoch, (cfg.data.scale_min, 1.0), cfg.data.hflip,
                augment=cfg.data.augment, rank=hw.dist.rank, world_size=hw.dist.world_size, workers=self.workers,
                prefetch=cfg.data.prefetch, spec=self.spec)
            for i, (xb, yb, idx) in enumerate(batches):
                step = epoch * steps_per_epoch + i
                factor = _lr_factor(cfg, step, steps_per_epoch)
                for g in self.optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                if self.set_progress is not None:  # estimators whose shape follows training progress (ReSTE)
                    self.set_progress(step / (cfg.epochs * steps_per_epoch))
                x = to_input(xb, self.spec, cfg.channels_last, self.device)
                y = torch.from_numpy(yb).to(self.device)
                if self.mixing:
                    x, y = mix_batch(x, y, len(self.labels), mix_rng, mixup=cfg.data.mixup, cutmix=cfg.data.cutmix)
                loss, terms = self._step(x, y, idx, f"epoch {epoch + 1} step {i}")
                loss_f = float(loss)
                run_loss += loss_f * len(yb)
                n_seen += len(yb)
                terms_f = [float(t) for t in terms]
                terms_sum += np.array(terms_f) * len(yb)
                img_s = n_seen * hw.dist.world_size / max(1e-9, time.time() - t0)
                bar.update(1, loss=f"{run_loss / n_seen:.3f}", img_s=f"{img_s:.0f}")
                if i % cfg.log_every == 0:
                    self._log({"event": "step", "epoch": epoch + 1, "step": i, "loss": loss_f,
                               "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": round(img_s, 1),
                               "terms": {lc.name: t for lc, t in zip(cfg.losses, terms_f)}})
            bar.close()
            train_time = time.time() - t0
            totals = hw.dist.sum([run_loss, float(n_seen), *terms_sum.tolist()], self.device)
            run_loss, n_seen, terms_sum = totals[0], totals[1], np.array(totals[2:])
            hw.dist.average_buffers(self.model)
            if main:
                val = evaluate_cache(self.model, self.val_cache, self.spec, channels_last=cfg.channels_last,
                                     device=self.device)
            epoch_time = time.time() - t0
            elapsed += epoch_time
            if main:
                record = {"event": "epoch", "epoch": epoch + 1, "train_size": size, "train_loss": run_loss / n_seen,
                          "terms": {lc.name: v / n_seen for lc, v in zip(cfg.losses, terms_sum)},
                          "val_top1": val["top1"], "val_loss": val["loss"], "epoch_s": round(epoch_time, 1),
                          "train_s": round(train_time, 1), "images_per_s": round(n_seen / max(1e-9, train_time), 1),
                          "data_wait_share": round(batches.wait_s / max(1e-9, train_time), 4)}
                history.append(record)
                self._log(record)
                log.info("epoch %d/%d: train loss %.4f, val top-1 %.4f (%.0f s, %.0f images/s, %.0f%% waiting for "
                         "data)", epoch + 1, cfg.epochs, record["train_loss"], val["top1"], epoch_time,
                         record["images_per_s"], 100 * record["data_wait_share"])
                self._save(self.out / "last.safetensors", {"epoch": epoch + 1})
                save_state(state_path, model=self.model, optimizer=self.optimizer, extra_modules=self.losses,
                           epoch=epoch, info={"elapsed_s": elapsed, "history": history})
            hw.dist.barrier()  # every rank resumes from the same finished epoch
        metrics: dict[str, Any] = {}
        if main:
            final = evaluate_cache(self.model, self.val_cache, self.spec, channels_last=cfg.channels_last,
                                   device=self.device)
            metrics = {"name": cfg.name, "val_top1": final["top1"], "val_loss": final["loss"],
                       "val_images": final["images"], "train_images": len(self.train_cache), "epochs": cfg.epochs,
                       "train_time_s": round(elapsed, 1), "params": sum(p.numel() for p in self.model.parameters()),
                       "labels": self.labels, "data_root": str(self.data_root),
                       "split": {"val_fraction": cfg.data.val_fraction, "seed": cfg.data.split_seed},
                       "hardware": {k: v for k, v in hw.describe().items() if k != "rank"}}
            self._save(self.out / "model.safetensors", {"metrics": metrics})
            atomic_write(self.out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
        hw.dist.barrier()
        return metrics


def train(config: TrainConfig, out: str | Path, *, data_root: str | None = None, resume: bool = False,
          source: str = "<config>", progress: bool = True) -> dict[str, Any]:
    """Train ``config`` into ``out``; returns the final metrics (empty on torchrun ranks other than 0)."""
    trainer = Trainer(config, out, data_root=data_root, source=source, progress=progress)
    try:
        return trainer.run(resume=resume)
    finally:
        close_process_group()
