"""The demo's claim: every payload decodes over HTTP exactly as in-process, and the summary is what the rows say."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "samples" / "weights" / "demo.yaml"


def test_codec_demo_round_trip() -> None:
    from edgesplit.demo import run_codec_demo

    r = run_codec_demo()
    assert r["payload_bytes"] <= 1.01 * r["information_bytes"] + 40


@pytest.mark.slow
@pytest.mark.skipif(not DEMO.is_file(), reason="no committed demo weights (samples/weights/demo.yaml)")
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    before = set(Path(tempfile.gettempdir()).glob("edgesplit-demo-*"))
    proc = subprocess.run([sys.executable, "-m", "edgesplit.cli", "demo", "--json", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
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
    assert "summary:" in proc.stdout
    assert set(Path(tempfile.gettempdir()).glob("edgesplit-demo-*")) == before  # nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json"]
