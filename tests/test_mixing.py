"""Batch mixing (mixup / CutMix): what each image holds, what its target says, and how the engine uses them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgesplit.config import from_dict, TrainConfig
from edgesplit.errors import ConfigError
from edgesplit.train import train
from edgesplit.train.losses import CrossEntropy
from edgesplit.train.mixing import mix_batch


def _batch(n: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    # image i is the constant i + 1 (every pixel tells which source image it came from)
    x = (torch.arange(n, dtype=torch.float32) + 1.0).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    return x, torch.arange(n) % classes


def test_off_is_the_identity_with_one_hot_targets() -> None:
    x, y = _batch()
    mx, t = mix_batch(x, y, 4, np.random.default_rng(0))
    assert torch.equal(mx, x) and torch.equal(t, F.one_hot(y, 4).float())


def test_mixup_blends_two_images_with_the_targets_weights() -> None:
    x, y = _batch(classes=8)  # distinct labels: target row i weighs image k by t[i, k]
    mx, t = mix_batch(x, y, 8, np.random.default_rng(3), mixup=1.0)
    assert torch.allclose(t.sum(1), torch.ones(8)) and ((t > 0).sum(1) <= 2).all()
    assert (t.max(1).values < 1).any()  # something was mixed
    expected = t @ (torch.arange(8, dtype=torch.float32) + 1.0)
    assert torch.allclose(mx, expected.view(8, 1, 1, 1).expand_as(mx), atol=1e-5)


def test_cutmix_pastes_a_box_whose_area_is_the_partners_weight() -> None:
    x, y = _batch(classes=8)
    mx, t = mix_batch(x, y, 8, np.random.default_rng(5), cutmix=1.0)
    assert torch.allclose(t.sum(1), torch.ones(8)) and ((t > 0).sum(1) <= 2).all()
    assert (t.max(1).values < 1).any()
    for k in range(8):  # the share of image i's pixels that came from image k is exactly t[i, k]
        share = (mx == k + 1).float().mean(dim=(1, 2, 3))
        assert torch.allclose(share, t[:, k], atol=1e-6)


def test_same_seed_same_mix_and_bad_alphas_rejected() -> None:
    x, y = _batch()
    a = mix_batch(x, y, 4, np.random.default_rng(7), mixup=0.4, cutmix=1.0)
    b = mix_batch(x, y, 4, np.random.default_rng(7), mixup=0.4, cutmix=1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="alphas"):
        mix_batch(x, y, 4, np.random.default_rng(0), mixup=-1.0)


def test_cross_entropy_of_soft_targets_is_the_weighted_sum() -> None:
    logits = torch.randn(5, 4)
    a, b, lam = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 3, 0, 2]), 0.3
    soft = lam * F.one_hot(a, 4).float() + (1 - lam) * F.one_hot(b, 4).float()
    ce = CrossEntropy()
    expected = lam * F.cross_entropy(logits, a) + (1 - lam) * F.cross_entropy(logits, b)
    assert torch.allclose(ce({"logits": logits}, None, soft), expected, atol=1e-6)


def _cfg(**data) -> TrainConfig:
    return from_dict(TrainConfig, {
        "name": "tiny-mix",
        "model": {"name": "resnet18", "params": {"width": 0.125}},
        "data": {"image_size": 32, "val_fraction": 0.25, **data},
        "losses": [{"name": "ce", "params": {"label_smoothing": 0.1}}],
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 1, "batch_size": 6, "threads": 1,
    })


def test_engine_trains_with_mixing_and_changes_the_run(image_folder: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    train(_cfg(), plain, data_root=str(image_folder), progress=False)
    mixed = tmp_path / "mixed"
    train(_cfg(mixup=0.4, cutmix=1.0), mixed, data_root=str(image_folder), progress=False)

    def first_loss(run: Path) -> float:
        steps = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
        return next(r for r in steps if r["event"] == "step")["loss"]

    assert np.isfinite(first_loss(mixed)) and first_loss(mixed) != first_loss(plain)


def test_mixing_is_validated(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.mixup"):
        _cfg(mixup=-0.5)
    teacher = tmp_path / "teacher"
    train(_cfg(), teacher, data_root=str(image_folder), progress=False)
    cfg = from_dict(TrainConfig, {
        "name": "nd-mix", "model": {"name": "resnet18", "params": {"width": 0.0625}},
        "teacher": str(teacher / "model.safetensors"),
        "data": {"image_size": 32, "val_fraction": 0.25, "cutmix": 1.0},
        "losses": [{"name": "ce"}, {"name": "nd"}], "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 1, "batch_size": 6, "threads": 1,
    })
    with pytest.raises(ConfigError, match=r"\['nd'\] need class labels"):
        train(cfg, tmp_path / "student", data_root=str(image_folder), progress=False)
