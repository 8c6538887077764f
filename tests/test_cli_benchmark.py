"""``edgesplit benchmark``: one row per backend x threads x batch with latency percentiles and throughput; top-1 and
payload bytes with --data; an existing --out is kept unless --overwrite; bench scripts keep committed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgesplit.cli import main

from .conftest import REPO, make_image_folder
from .runtime_fixtures import full_bundle, split_bundle  # noqa: F401

QUICK = ["--seconds", "0.05"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("img") / "data", per_class=2)


def _bench(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["benchmark", *argv, *QUICK, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_grid_of_backend_threads_batch(split_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _bench(capsys, str(split_bundle), "--backend", "onnxruntime,openvino", "--threads", "1,2", "--batch", "1,3")
    grid = [(row["backend"], row["threads"], row["batch"]) for row in r["rows"]]
    assert grid == [(b, t, n) for b in ("onnxruntime", "openvino") for t in (1, 2) for n in (1, 3)]
    for row in r["rows"]:
        assert row["calls"] >= 5 and row["images"] == row["calls"] * row["batch"]
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] > 0 and row["streams"] == 1 and row["threads_used"] == row["threads"]
    assert "accuracy" not in r and r["inputs"].startswith("8 synthetic")


def test_data_gives_top1_and_payload_bytes(split_bundle: Path, images: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from edgesplit.runtime import DeviceEncoder, ServerDecoder

    r = _bench(capsys, str(split_bundle), "--data", str(images))
    acc = r["accuracy"][0]
    paths = sorted(images.rglob("img*"))
    with DeviceEncoder.open(split_bundle) as enc, ServerDecoder.open(split_bundle, top_k=1) as dec:
        payloads = enc.encode_batch(paths)
        preds = dec.decode_batch(payloads)
    assert acc["images"] == acc["labelled"] == len(paths)
    assert acc["mean_payload_bytes"] == pytest.approx(sum(map(len, payloads)) / len(paths))
    assert acc["top1"] == pytest.approx(sum(p.top1 == path.parent.name for p, path in zip(preds, paths)) / len(paths))


def test_throughput_mode_full_bundle(full_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _bench(capsys, str(full_bundle), "--mode", "throughput", "--streams", "2", "--batch", "2", "--threads", "1")
    (row,) = r["rows"]
    assert row["mode"] == "throughput" and row["streams"] == 2 and row["calls"] >= 10  # at least min_calls each
    assert main(["benchmark", str(full_bundle), *QUICK]) == 0
    table = capsys.readouterr().out
    assert "p50 ms" in table and "images/s" in table and "predict_batch" in table


def test_out_is_not_overwritten_unless_asked(full_bundle: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    out.write_text("keep me")
    assert main(["benchmark", str(full_bundle), *QUICK, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["benchmark", str(full_bundle), *QUICK, "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["kind"] == "full"


def test_bad_options_are_refused(full_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", str(full_bundle), *QUICK, "--batch", "0"])
    assert exc.value.code == 2 and "--batch: must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["benchmark", str(full_bundle), *QUICK, "--backend", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgesplit benchmark: error: ") and "nosuch" in err and "Traceback" not in err


def test_bench_script_keeps_committed_results(tmp_path: Path) -> None:
    committed = REPO / "bench" / "results" / "codec.json"
    before = committed.read_bytes()
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "codec.py"), "--runs", "1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert committed.read_bytes() == before
