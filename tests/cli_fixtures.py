"""Tiny checkpoints for the command tests: an untrained narrow ResNet-18 teacher and an Entropic Student on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

LABELS = ["apple", "banana", "cherry"]
SIZE = 32
NAMES = {"apple": "Apple", "banana": "Banana", "cherry": "Cherry"}


def save_teacher(path: Path, *, label_names: list[str] | None = None) -> Path:
    import torch

    from edgesplit.plugins.backbones.resnet import resnet18
    from edgesplit.preprocess import Preprocess
    from edgesplit.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = resnet18(num_classes=len(LABELS), width=0.125).eval()
    extra: dict[str, Any] = {"label_names": label_names} if label_names else {}
    save_checkpoint(model, path, model_config={"kind": "backbone", "name": "resnet18",
                                               "params": {"num_classes": len(LABELS), "width": 0.125}},
                    labels=LABELS, preprocess=Preprocess.for_size(SIZE).to_dict(), extra=extra)
    return path


def save_student(teacher: Path, path: Path) -> Path:
    import torch

    from edgesplit import registry
    from edgesplit.preprocess import Preprocess
    from edgesplit.train.checkpoint import save_checkpoint

    if "entropic" not in registry.available("student"):
        pytest.skip("the split student 'entropic' is not available")
    torch.manual_seed(1)
    student = registry.create("student", "entropic", teacher=str(teacher), bottleneck_channels=8,
                              encoder_channels=16, decoder_channels=24).eval()
    save_checkpoint(student, path, model_config={"kind": "student", "name": "entropic",
                                                 "params": student.recipe_params},
                    labels=LABELS, preprocess=Preprocess.for_size(SIZE).to_dict())
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return save_teacher(tmp_path_factory.mktemp("ckpt") / "teacher.safetensors")


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Path) -> Path:
    return save_student(tiny_teacher, tmp_path_factory.mktemp("ckpt") / "student.safetensors")
