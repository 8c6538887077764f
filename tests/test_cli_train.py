"""``edgesplit train`` from the command line: --set overrides validated like the file, auto-numbered run folders,
the generated recipe schema, display names stored in the checkpoint, and the training report."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from edgesplit.cli import main  # noqa: E402
from edgesplit.config import TrainConfig, apply_overrides  # noqa: E402
from edgesplit.errors import ConfigError  # noqa: E402

RECIPE = {
    "name": "tiny",
    "model": {"name": "resnet18", "params": {"width": 0.125, "num_classes": 3}},
    "data": {"image_size": 32, "val_fraction": 0.25},
    "losses": [{"name": "ce"}],
    "optimizer": {"name": "adam", "lr": 0.01},
    "epochs": 3,
    "batch_size": 6,
    "threads": 1,
}


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "epoch"]


def test_set_overrides_reach_the_run(recipe: Path, image_folder: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--data", str(image_folder), "--no-progress", "--json",
                 "--no-report", "--set", "epochs=1", "--set", "data.limit_per_class=4",
                 "--set", "losses.0.weight=0.5"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert _epochs(run) == [1] and metrics["epochs"] == 1
    assert metrics["train_images"] + metrics["val_images"] == 3 * 4  # 4 images per class, not 8
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["losses"][0]["weight"] == 0.5 and saved["data"]["limit_per_class"] == 4


@pytest.mark.parametrize("override, needle", [
    ("epochs=0", "epochs must be a positive integer, got 0"),
    ("data.nope=1", "data.nope: unknown key"),
    ("epochs=many", "epochs: expected an integer"),
    ("epochs", "expected KEY=VALUE"),
    ("losses.3.weight=1", "no item 3"),
])
def test_bad_overrides_are_config_errors(override: str, needle: str, recipe: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgesplit train: error: ") and needle in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_apply_overrides_paths() -> None:
    data = {"epochs": 3, "losses": [{"name": "kd"}, {"name": "ce"}]}
    out = apply_overrides(data, ["epochs=1", "data.limit_per_class=20", "losses[1].weight=0.25",
                                 "freeze=[encoder, bottleneck]", "teacher=null"])
    assert out == {"epochs": 1, "losses": [{"name": "kd"}, {"name": "ce", "weight": 0.25}],
                   "data": {"limit_per_class": 20}, "freeze": ["encoder", "bottleneck"], "teacher": None}
    assert data == {"epochs": 3, "losses": [{"name": "kd"}, {"name": "ce"}]}  # the input is not changed
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides(data, ["epochs.x=1"])


def test_existing_out_gets_the_next_number(recipe: Path, image_folder: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    common = ["--data", str(image_folder), "--no-progress", "--no-report", "--set", "epochs=1"]
    for _ in range(3):
        assert main(["train", str(recipe), "--out", str(run), *common]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run", "run-2", "run-3"]
    assert "run directory: " + str(tmp_path / "run-3") in capsys.readouterr().err
    assert main(["train", str(recipe), "--out", str(run), *common[:-2], "--set", "epochs=2", "--resume"]) == 0
    assert _epochs(run) == [1, 2] and not (tmp_path / "run-4").exists()  # --resume continues the named run


def _field_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        tp = hints[f.name]
        for sub in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(sub):
                keys += _field_keys(sub, key + ("[]." if typing.get_origin(tp) is list else "."))
    return keys


def test_schema_lists_every_key_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    text = capsys.readouterr().out
    for key in _field_keys(TrainConfig):
        assert f"| `{key}` |" in text, key
    assert "| `epochs` | int | `required` |" in text and "| `batch_size` | int | `64` |" in text


def test_label_names_and_report(recipe: Path, image_folder: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from edgesplit.train import read_metadata

    names = tmp_path / "names.yaml"
    names.write_text("apple: Red apple\nbanana: Yellow banana\n")
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--data", str(image_folder), "--no-progress",
                 "--set", "epochs=2", "--label-names", str(names)]) == 0
    text = capsys.readouterr().out
    meta = read_metadata(run / "model.safetensors")
    assert meta["labels"] == ["apple", "banana", "cherry"]
    assert meta["label_names"] == ["Red apple", "Yellow banana", "cherry"]  # no name given: the id
    report = json.loads((run / "report.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["epochs"] == 2 and report["final_top1"] == metrics["val_top1"]
    assert report["best_top1"] == max(r["val_top1"] for r in map(json.loads, (run / "log.jsonl").read_text()
                                                                   .splitlines()) if r["event"] == "epoch")
    conf = report["confusion"]
    assert conf["images"] == metrics["val_images"] and conf["names"][0] == "Red apple"
    assert sum(conf["counts"][i][i] for i in range(3)) / conf["images"] == pytest.approx(metrics["val_top1"])
    for png in ("report.png", "confusion.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best top-1" in text and "final top-1" in text and "images/s" in text and "report.png" in text


def test_bad_label_names_fail_before_training(recipe: Path, image_folder: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    names = tmp_path / "names.yaml"
    names.write_text("[a, b]\n")
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--data", str(image_folder),
                 "--label-names", str(names)]) == 2
    assert "names.yaml" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_summary_reads_images_per_s_and_rate(tmp_path: Path) -> None:
    from edgesplit.train.report import format_summary, summarize

    lines = [{"event": "step", "epoch": 1, "step": 0, "loss": 1.0},
             {"event": "epoch", "epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "val_top1": 0.5, "epoch_s": 10.0,
              "images_per_s": 90.0, "terms": {"rate": 8000.0}},
             {"event": "epoch", "epoch": 2, "train_loss": 1.0, "val_loss": 1.2, "val_top1": 0.7, "epoch_s": 10.0,
              "images_per_s": 110.0, "terms": {"rate": 4000.0}},
             {"event": "epoch", "epoch": 3, "train_loss": 0.9, "val_loss": 1.3, "val_top1": 0.6, "epoch_s": 10.0,
              "images_per_s": 100.0, "terms": {"rate": 4400.0}}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "metrics.json").write_text(json.dumps({"name": "s", "val_top1": 0.6, "train_time_s": 30.0}))
    s = summarize(tmp_path)
    assert (s["best_top1"], s["best_epoch"], s["final_top1"]) == (0.7, 2, 0.6)
    assert s["images_per_s"] == pytest.approx(100.0) and s["rate_bytes"] == 550.0 and s["time_s"] == 30.0
    assert "550 B per image" in format_summary(s)
