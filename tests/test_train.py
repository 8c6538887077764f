"""Training engine on tiny synthetic data: a run, its files, resume, checkpoints, losses and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgesplit.config import from_dict, TrainConfig
from edgesplit.errors import ConfigError
from edgesplit.train import load, read_metadata, train
from edgesplit.train.losses import KnowledgeDistillation, NormDirection


def _cfg(**over) -> TrainConfig:
    base = {
        "name": "tiny",
        "model": {"name": "resnet18", "params": {"width": 0.125}},
        "data": {"image_size": 32, "val_fraction": 0.25, "train_sizes": [[0, 24], [1, 32]]},
        "losses": [{"name": "ce", "params": {"label_smoothing": 0.1}}],
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 2,
        "batch_size": 6,
        "threads": 1,
    }
    base.update(over)
    return from_dict(TrainConfig, base)


def test_train_writes_run_and_checkpoint_round_trips(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(_cfg(), out, data_root=str(image_folder), progress=False)
    for name in ("config.yaml", "log.jsonl", "last.safetensors", "state.safetensors", "model.safetensors",
                 "metrics.json"):
        assert (out / name).is_file(), name
    events = [json.loads(l)["event"] for l in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("epoch") == 2
    assert metrics["val_images"] == 6 and 0.0 <= metrics["val_top1"] <= 1.0
    meta = read_metadata(out / "model.safetensors")
    assert meta["labels"] == ["apple", "banana", "cherry"] and meta["model"]["name"] == "resnet18"
    model = load(out / "model.safetensors")
    x = torch.randn(2, 3, 32, 32)
    ref = torch.load  # noqa: F841  (nothing here uses pickle)
    assert model(x).shape == (2, 3)


def test_refuses_to_overwrite_and_resumes(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(epochs=1), out, data_root=str(image_folder), progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(epochs=2), out, data_root=str(image_folder), progress=False)
    train(_cfg(epochs=2), out, data_root=str(image_folder), resume=True, progress=False)
    epochs = [json.loads(l)["epoch"] for l in (out / "log.jsonl").read_text().splitlines()
              if json.loads(l)["event"] == "epoch"]
    assert epochs == [1, 2]  # the resumed run did not redo epoch 1


def test_distillation_with_all_losses(image_folder: Path, tmp_path: Path) -> None:
    teacher_out = tmp_path / "teacher"
    train(_cfg(epochs=1), teacher_out, data_root=str(image_folder), progress=False)
    cfg = _cfg(
        epochs=1,
        model={"name": "resnet18", "params": {"width": 0.0625}},
        teacher=str(teacher_out / "model.safetensors"),
        losses=[{"name": "ce"}, {"name": "kd", "params": {"temperature": 2.0}},
                {"name": "feature_mse", "weight": 0.5, "params": {"stages": ["stage3"]}},
                {"name": "nd", "weight": 0.5}],
    )
    metrics = train(cfg, tmp_path / "student", data_root=str(image_folder), progress=False)
    assert metrics["train_images"] == 18


def test_distillation_loss_without_teacher_is_rejected(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no teacher"):
        train(_cfg(losses=[{"name": "kd"}]), tmp_path / "r", data_root=str(image_folder), progress=False)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    kd = KnowledgeDistillation(temperature=4.0)
    z = torch.randn(5, 10)
    assert float(kd({"logits": z}, {"logits": z}, torch.zeros(5, dtype=torch.long))) == pytest.approx(0.0, abs=1e-6)
    assert float(kd({"logits": z}, {"logits": torch.randn(5, 10)}, torch.zeros(5, dtype=torch.long))) > 0


def test_nd_loss_matches_formula() -> None:
    class Stub(torch.nn.Module):
        stage_channels = {"stage4": 4}

    nd = NormDirection(student=Stub(), teacher=Stub(), num_classes=2, momentum=0.0)
    fs = torch.randn(3, 4, 2, 2)
    ft = torch.randn(3, 4, 2, 2)
    y = torch.tensor([0, 1, 1])
    loss = nd({"stage4": fs}, {"stage4": ft}, y)
    es, et = fs.mean((2, 3)), ft.mean((2, 3))
    centers = torch.stack([et[0], et[1:].mean(0)])
    e = torch.nn.functional.normalize(centers[y], dim=1)
    expect = (1 - (es * e).sum(1) / torch.maximum(es.norm(dim=1), et.norm(dim=1))).mean()
    assert float(loss) == pytest.approx(float(expect), rel=1e-5)


def test_eval_checkpoint_with_input_codec(image_folder: Path, tmp_path: Path) -> None:
    from edgesplit.train.evaluate import evaluate_checkpoint

    out = tmp_path / "run"
    train(_cfg(epochs=1), out, data_root=str(image_folder), progress=False)
    plain = evaluate_checkpoint(out / "model.safetensors", image_folder)
    assert plain["images"] == 24 and "mean_input_bytes" not in plain
    jpeg = evaluate_checkpoint(out / "model.safetensors", image_folder, input_codec="jpeg", quality=50, limit=9)
    assert jpeg["images"] == 9 and 100 < jpeg["mean_input_bytes"] < 32 * 32 * 3
    val = evaluate_checkpoint(out / "model.safetensors", image_folder, split="val")
    assert val["images"] == 6
