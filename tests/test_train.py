"""Training engine on tiny synthetic data: a run, its files, resume, checkpoints, losses and eval."""

from __future__ import annotations

import json
import math
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
    # the three classes differ in color: two epochs learn them (chance is 1/3, untrained loss ~ln 3)
    assert metrics["val_images"] == 6 and metrics["val_top1"] >= 5 / 6
    assert metrics["val_loss"] < math.log(3)
    meta = read_metadata(out / "model.safetensors")
    assert meta["labels"] == ["apple", "banana", "cherry"] and meta["model"]["name"] == "resnet18"
    model = load(out / "model.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 3)
    from edgesplit.train.evaluate import evaluate_checkpoint

    # the saved checkpoint scores what training reported, on the same validation images
    assert evaluate_checkpoint(out / "model.safetensors", image_folder, subset="val")["top1"] == metrics["val_top1"]


def test_refuses_to_overwrite_and_resumes(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(epochs=1), out, data_root=str(image_folder), progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(epochs=2), out, data_root=str(image_folder), progress=False)
    train(_cfg(epochs=2), out, data_root=str(image_folder), resume=True, progress=False)
    epochs = [json.loads(l)["epoch"] for l in (out / "log.jsonl").read_text().splitlines()
              if json.loads(l)["event"] == "epoch"]
    assert epochs == [1, 2]  # the resumed run did not redo epoch 1


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k in b and a[k].is_floating_point())


def test_distillation_with_all_losses(image_folder: Path, tmp_path: Path) -> None:
    """Each distillation loss changes what the student learns, and a run of all of them trains (finite, falling)."""
    teacher_out = tmp_path / "teacher"
    train(_cfg(epochs=1), teacher_out, data_root=str(image_folder), progress=False)
    extra = {"kd": {"name": "kd", "params": {"temperature": 2.0}},
             "feature_mse": {"name": "feature_mse", "weight": 0.5, "params": {"stages": ["stage3"]}},
             "nd": {"name": "nd", "weight": 0.5}}

    def run(name: str, losses: list[dict], epochs: int = 1) -> Path:
        cfg = _cfg(epochs=epochs, model={"name": "resnet18", "params": {"width": 0.0625}},
                   teacher=str(teacher_out / "model.safetensors"), losses=losses)
        train(cfg, tmp_path / name, data_root=str(image_folder), progress=False)
        return tmp_path / name

    everything = run("all", [{"name": "ce"}, *extra.values()], epochs=2)
    epochs = [json.loads(l) for l in (everything / "log.jsonl").read_text().splitlines()
              if json.loads(l)["event"] == "epoch"]
    for record in epochs:
        assert set(record["terms"]) == {"ce", *extra}
        assert all(math.isfinite(v) for v in record["terms"].values())
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]

    ce = _weights(run("ce", [{"name": "ce"}]) / "model.safetensors")
    assert not _differs(ce, _weights(run("ce_again", [{"name": "ce"}]) / "model.safetensors"))  # deterministic
    with_loss = {name: _weights(run(name, [{"name": "ce"}, loss]) / "model.safetensors")
                 for name, loss in extra.items()}
    for name, weights in with_loss.items():
        assert _differs(weights, ce), f"adding {name} to ce did not change the trained weights"
    names = sorted(with_loss)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert _differs(with_loss[a], with_loss[b]), f"{a} and {b} trained identical weights"


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
    val = evaluate_checkpoint(out / "model.safetensors", image_folder, subset="val")
    assert val["images"] == 6
    assert plain["top1"] >= 0.75  # one epoch on color-coded classes; chance is 1/3
    assert evaluate_checkpoint(out / "model.safetensors", image_folder)["top1"] == plain["top1"]  # deterministic
    # the same checkpoint with its classifier zeroed predicts class 0 for every image: 8 of 24 right
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: torch.zeros_like(v) if k.startswith("head.fc.") else v for k, v in tensors.items()}
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=meta)
    broken = evaluate_checkpoint(tmp_path / "broken.safetensors", image_folder)
    assert broken["images"] == 24 and broken["top1"] == pytest.approx(8 / 24) and broken["top1"] < plain["top1"]
