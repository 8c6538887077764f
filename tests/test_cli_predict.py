"""``edgesplit predict``: one row per image with names and probabilities, on checkpoints and bundles; payload bytes
for split models; clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgesplit.cli import main

from .cli_fixtures import LABELS, NAMES, tiny_student, tiny_teacher  # noqa: F401
from .conftest import make_image_folder
from .runtime_fixtures import full_bundle, split_bundle  # noqa: F401


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("img") / "data", per_class=2)


def _predict(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["predict", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_checkpoint_rows_with_class_folder_and_names(tiny_teacher: Path, images: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    names = tmp_path / "labels.yaml"
    names.write_text(yaml.safe_dump(NAMES))
    out = _predict(capsys, str(tiny_teacher), str(images), "--top-k", "2", "--label-names", str(names))
    assert out["kind"] == "full" and out["backend"] == "torch"
    files = [r["file"] for r in out["rows"]]
    assert files == sorted(p.relative_to(images).as_posix() for p in images.rglob("img*"))
    for r in out["rows"]:
        assert len(r["top"]) == 2 and r["payload_bytes"] is None
        assert r["top"][0]["prob"] >= r["top"][1]["prob"]
        assert {t["name"] for t in r["top"]} <= set(NAMES.values())
        assert all(NAMES[t["id"]] == t["name"] for t in r["top"])


def test_checkpoint_table_without_names_shows_ids(tiny_teacher: Path, images: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(tiny_teacher), str(images / "apple" / "img000.jpg")]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["file", "top-1", "prob"]
    assert "img000.jpg" in text and "1 image(s), full model" in text
    assert any(label in text.splitlines()[2] for label in LABELS)


def test_split_checkpoint_shows_payload_bytes(tiny_student: Path, images: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = _predict(capsys, str(tiny_student), str(images))
    assert out["kind"] == "split"
    assert all(isinstance(r["payload_bytes"], int) and r["payload_bytes"] > 20 for r in out["rows"])


def test_split_bundle_goes_through_bytes(split_bundle: Path, images: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from edgesplit.runtime import DeviceEncoder, ServerDecoder

    out = _predict(capsys, str(split_bundle), str(images), "--top-k", "3")
    assert out["kind"] == "split" and out["backend"] == "onnxruntime" and len(out["rows"]) == 6
    first = sorted(images.rglob("img*"))[0]
    with DeviceEncoder.open(split_bundle) as enc, ServerDecoder.open(split_bundle, top_k=3) as dec:
        payload = enc.encode(first)
        want = dec.decode(payload)
    row = out["rows"][0]
    assert row["payload_bytes"] == len(payload)
    assert [t["id"] for t in row["top"]] == list(want.classes)
    assert [t["name"] for t in row["top"]] == list(want.classes)  # no names in the bundle: ids shown
    assert [t["prob"] for t in row["top"]] == pytest.approx(list(want.probs))


def test_full_bundle_openvino(full_bundle: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _predict(capsys, str(full_bundle), str(images), "--backend", "openvino", "--top-k", "1")
    assert out["kind"] == "full" and out["backend"] == "openvino"
    assert all(len(r["top"]) == 1 and r["payload_bytes"] is None for r in out["rows"])


@pytest.mark.parametrize("case", ["no-target", "no-images", "not-image", "bad-names"])
def test_bad_input_is_a_clear_error(case: str, tiny_teacher: Path, images: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    target, where = str(tiny_teacher), str(images)
    extra: list[str] = []
    if case == "no-target":
        target = str(tmp_path / "missing.safetensors")
    elif case == "no-images":
        where = str(tmp_path / "nothing")
    elif case == "not-image":
        (tmp_path / "notes.txt").write_text("hello")
        where = str(tmp_path / "notes.txt")
    else:
        (tmp_path / "names.yaml").write_text("- just\n- a list\n")
        extra = ["--label-names", str(tmp_path / "names.yaml")]
    assert main(["predict", target, where, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgesplit predict: error: ") and "Traceback" not in err
    assert {"no-target": "missing.safetensors", "no-images": "nothing", "not-image": "notes.txt",
            "bad-names": "names.yaml"}[case] in err
