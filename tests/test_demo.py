"""The demo's claim: every payload decodes over HTTP exactly as in-process, and the summary is what the rows say;
its table reads well (full file names, true label, a mark on wrong answers, nothing else between the rows); it runs
on one's own bundle (``--bundle``) and keeps its bundles on request (``--keep``). It lives outside the torch-free
core (``edgesplit.apps``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import make_image_folder
from .runtime_fixtures import LABELS, full_bundle, split_bundle  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "samples" / "weights" / "demo.yaml"


def test_codec_demo_round_trip() -> None:
    from edgesplit.apps.demo import run_codec_demo

    r = run_codec_demo()
    assert r["payload_bytes"] <= 1.01 * r["information_bytes"] + 40


def test_demo_is_an_app_not_core() -> None:
    assert not (REPO / "sdk" / "demo.py").exists()
    code = ("import sys, edgesplit.cli; edgesplit.cli._build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'edgesplit.apps.demo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"  # building the CLI (`edgesplit --help`) imports nothing heavy, the demo included
    from edgesplit.cli import _build_parser

    args = _build_parser().parse_args(["demo", "--bundle", "b", "--keep", "k"])
    assert args.func.__module__ == "edgesplit.apps.cli" and (args.bundle, args.keep) == ("b", "k")


def _table(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("file "))
    end = next(i for i, line in enumerate(lines) if line.startswith("summary:"))
    return lines[start:end]


def test_own_split_bundle(split_bundle: Path, tmp_path: Path) -> None:
    from edgesplit.apps.demo import WRONG, run_demo

    images = make_image_folder(tmp_path / "img", per_class=2)
    out = io.StringIO()
    result = run_demo(images, bundle=split_bundle, out=out)
    rows, summary = result["rows"], result["summary"]
    assert [r["file"] for r in rows] == sorted(str(p.relative_to(images)) for p in images.rglob("img*"))
    assert all(r["matches_in_process"] for r in rows) and result["full_student"] is None
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    assert all(r["jpeg_iso_bytes"] is None for r in rows)  # the demo's teacher has other labels: no JPEG baseline
    table = _table(out.getvalue())
    assert table[0].split()[:5] == ["file", "true", "label", "prediction", "wrong"]
    assert len(table) == 1 + len(rows)  # nothing but rows between the header and the summary
    for line, r in zip(table[1:], rows):
        assert line.split()[:2] == [r["file"], r["label"]]  # class folder included, true label next to it
        assert (f" {WRONG} " in line) == (not r["correct"])


def test_own_full_bundle(full_bundle: Path, tmp_path: Path) -> None:
    from edgesplit.apps.demo import run_demo

    images = make_image_folder(tmp_path / "img", per_class=2)
    out = io.StringIO()
    result = run_demo(images, bundle=full_bundle, out=out)
    assert result["rows"] == [] and result["full_student"]["accuracy"] is not None
    assert "full student on the device (DeviceModel, openvino)" in out.getvalue()


def test_bad_keep_and_bundle(split_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgesplit.cli import main

    images = make_image_folder(tmp_path / "img", per_class=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["demo", "--images", str(images), "--keep", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["demo", "--images", str(images), "--bundle", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgesplit demo: error: ") and "nothing" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.skipif(not DEMO.is_file(), reason="no committed demo weights (samples/weights/demo.yaml)")
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    keep = tmp_path / "bundles"
    before = set(Path(tempfile.gettempdir()).glob("edgesplit-demo-*"))
    proc = subprocess.run([sys.executable, "-m", "edgesplit.cli", "demo", "--json", str(out), "--keep", str(keep)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows, summary = result["rows"], result["summary"]
    assert len(rows) == summary["images"] == len(list((REPO / "samples" / "images").rglob("*.JPEG")))
    assert all(r["matches_in_process"] for r in rows)
    assert all(r["payload_bytes"] > 20 for r in rows)
    mean_bytes = sum(r["payload_bytes"] for r in rows) / len(rows)
    mean_jpeg = sum(r["jpeg_iso_bytes"] for r in rows) / len(rows)
    assert summary["mean_payload_bytes"] == pytest.approx(mean_bytes)
    assert summary["mean_jpeg_iso_bytes"] == pytest.approx(mean_jpeg)
    assert summary["bytes_saved_vs_jpeg"] == pytest.approx(1 - mean_bytes / mean_jpeg)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    table = _table(proc.stdout)
    assert len(table) == 1 + len(rows) and all("/" in line.split()[0] for line in table[1:])
    assert "JPEG@iso: " in proc.stdout and "the full student is another, smaller model" in proc.stdout
    assert "Warning" not in proc.stderr and "Warning" not in proc.stdout
    assert {p.name for p in keep.iterdir()} == {"split", "full"}  # --keep kept both bundles
    assert set(Path(tempfile.gettempdir()).glob("edgesplit-demo-*")) == before  # nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundles", "demo.json"]
