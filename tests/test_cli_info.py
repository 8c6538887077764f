"""``edgesplit info``: a bundle's kind, labels, input, latent, parts with sizes and parity; a checkpoint's role and
teacher hash; a teacher's cut points; clear errors for what is neither."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgesplit.cli import main

from .cli_fixtures import LABELS, SIZE, tiny_student, tiny_teacher  # noqa: F401
from .runtime_fixtures import LATENT, split_bundle  # noqa: F401


def _info(capsys: pytest.CaptureFixture[str], target: Path) -> dict:
    assert main(["info", str(target), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def exported(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    from edgesplit.export import export_checkpoint

    return export_checkpoint(tiny_teacher, tmp_path_factory.mktemp("b") / "teacher.bundle", formats="onnx",
                             calib_images=4, threads=1).path


def test_split_bundle(split_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _info(capsys, split_bundle)
    assert d["kind"] == "split" and d["labels"] == LABELS and d["label_names"] == LABELS
    assert d["latent_shape"] == list(LATENT) and d["codec"]["file"] == "codec.npz"
    assert set(d["parts"]) == {"encoder", "decoder"}
    assert set(d["parts"]["encoder"]) == {"onnxruntime", "openvino"}
    assert d["parts"]["encoder"]["onnxruntime"]["bytes"] == (split_bundle / "encoder.onnx").stat().st_size
    assert d["input"]["preprocess"]["size"] == 32
    assert "parity" not in d  # this bundle was written without an export report
    assert main(["info", str(split_bundle)]) == 0
    text = capsys.readouterr().out
    assert f"latent      {'x'.join(map(str, LATENT))} int32 symbols" in text and "part        decoder" in text


def test_exported_bundle_shows_parity(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _info(capsys, exported)
    report = json.loads((exported / "export_report.json").read_text())
    assert d["kind"] == "full" and d["parity"]["passed"] is True
    assert d["parity"]["rows"][0]["max_abs_logits"] == report["rows"][0]["parity"]["max_abs_logits"]
    assert d["source"]["checkpoint"] == "teacher.safetensors"


def test_teacher_cut_points(tiny_teacher: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _info(capsys, tiny_teacher)
    assert d["type"] == "checkpoint" and d["role"] == "backbone" and d["labels"] == LABELS
    cuts = d["cuts"]
    assert [c["cut"] for c in cuts] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    macs = [c["device_macs"] for c in cuts]
    assert macs == sorted(macs) and macs[0] > 0
    assert cuts[0]["latent_shape"][1] == SIZE // 4  # the ResNet stem: stride 2 conv, stride 2 pool
    assert all(c["latent_values"] == int(np.prod(c["latent_shape"])) for c in cuts)
    assert main(["info", str(tiny_teacher)]) == 0
    assert "cut points" in capsys.readouterr().out


def test_student_names_its_teacher(tiny_student: Path, tiny_teacher: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _info(capsys, tiny_student)
    assert d["role"] == "split student" and d["kind"] == "split" and d["cut"]
    assert d["teacher"]["sha256"] == hashlib.sha256(tiny_teacher.read_bytes()).hexdigest()
    assert "cuts" not in d


@pytest.mark.parametrize("case", ["missing", "foreign", "empty-dir"])
def test_neither_bundle_nor_checkpoint(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "thing"
    if case == "foreign":
        from safetensors.numpy import save_file

        target = tmp_path / "thing.safetensors"
        save_file({"w": np.zeros(3, np.float32)}, str(target))
    elif case == "empty-dir":
        target.mkdir()
    assert main(["info", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgesplit info: error: ") and "Traceback" not in err and str(target) in err


@pytest.mark.parametrize("module", ["edgesplit.info", "edgesplit.labels", "edgesplit.predict", "edgesplit._commands",
                                    "edgesplit.runtime.predict", "edgesplit.runtime.benchmark"])
def test_command_modules_leave_torch_out(module: str) -> None:
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", f"importing {module} imported torch"
