"""Display names next to class ids: stored by export (from --label-names or the checkpoint), checked by the
manifest schema, returned by Prediction, HTTP answers and predict; bundles without names show their ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgesplit.bundle import Bundle, BundleWriter
from edgesplit.errors import BundleError

from .cli_fixtures import LABELS, NAMES, save_teacher
from .runtime_fixtures import full_bundle, split_bundle  # noqa: F401

DISPLAY = [NAMES[label] for label in LABELS]


def _renamed(source: Path, dest: Path, names: object) -> Path:
    """``source`` rewritten with ``label_names`` in its manifest (same files, so the same graphs)."""
    import shutil

    src = Bundle.open(source)
    with BundleWriter(dest) as writer:
        for rel in src.manifest["files"]:
            shutil.copyfile(source / rel, writer.path(rel))
        manifest = {k: v for k, v in src.manifest.items() if k not in ("files", "fingerprint", "format_version")}
        manifest["label_names"] = names
        writer.commit(manifest)
    return dest


@pytest.fixture(scope="module")
def named_split(split_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _renamed(split_bundle, tmp_path_factory.mktemp("named") / "split", DISPLAY)


def test_server_decoder_and_http_answer_carry_names(named_split: Path, split_bundle: Path) -> None:
    httpx = pytest.importorskip("httpx")
    from edgesplit.runtime import DeviceEncoder, ServerDecoder
    from edgesplit.runtime.service import BackgroundServer, create_app

    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    with DeviceEncoder.open(named_split) as enc, ServerDecoder.open(named_split, top_k=3) as dec:
        payload = enc.encode(image)
        pred = dec.decode(payload)
        assert pred.names == tuple(NAMES[label] for label in pred.classes) and pred.top1_name == NAMES[pred.top1]
        with BackgroundServer(create_app(dec)) as server, httpx.Client(base_url=server.url) as client:
            body = client.post("/v1/decode", content=payload,
                               headers={"content-type": "application/octet-stream"}).json()
    assert body["classes"] == list(pred.classes) and body["names"] == list(pred.names)
    assert body["top1_name"] == pred.top1_name
    with DeviceEncoder.open(split_bundle) as enc, ServerDecoder.open(split_bundle) as dec:  # no names: the ids
        old = dec.decode(enc.encode(image))
    assert old.names == old.classes and old.to_dict()["top1_name"] == old.top1


def test_device_model_names(full_bundle: Path, tmp_path: Path) -> None:
    from edgesplit.runtime import DeviceModel

    named = _renamed(full_bundle, tmp_path / "full", DISPLAY)
    assert Bundle.open(named).label_names == DISPLAY and Bundle.open(full_bundle).label_names == LABELS
    with DeviceModel.open(named, top_k=2) as model:
        pred = model.predict(np.zeros((40, 40, 3), np.uint8))
    assert pred.names == tuple(NAMES[label] for label in pred.classes)


@pytest.mark.parametrize("names, where", [(["A", "B"], "2 names for 3 labels"), ("abc", "label_names"),
                                          (["A", "", "C"], "label_names[1]")])
def test_manifest_schema_checks_names(names: object, where: str, split_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=re.escape(where)):
        _renamed(split_bundle, tmp_path / "bad", names)


def test_export_stores_given_or_carried_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    from edgesplit.cli import main

    carried = save_teacher(tmp_path / "named.safetensors", label_names=DISPLAY)
    plain = save_teacher(tmp_path / "plain.safetensors")
    names_file = tmp_path / "labels.yaml"
    names_file.write_text(yaml.safe_dump({"apple": "Green apple"}))
    fast = ["--backend", "onnxruntime", "--calib-images", "3", "--threads", "1"]
    assert main(["export", str(carried), "--out", str(tmp_path / "a"), *fast]) == 0
    assert main(["export", str(plain), "--out", str(tmp_path / "b"), *fast, "--label-names", str(names_file)]) == 0
    assert main(["export", str(plain), "--out", str(tmp_path / "c"), *fast]) == 0
    capsys.readouterr()
    assert Bundle.open(tmp_path / "a").manifest["label_names"] == DISPLAY
    assert Bundle.open(tmp_path / "b").manifest["label_names"] == ["Green apple", "banana", "cherry"]
    assert "label_names" not in Bundle.open(tmp_path / "c").manifest  # no names anywhere: the manifest has none
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    assert main(["predict", str(tmp_path / "a"), str(image), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["rows"][0]["top"]
    assert all(t["name"] == NAMES[t["id"]] for t in top)
    assert main(["info", str(tmp_path / "b"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label_names"][0] == "Green apple"
