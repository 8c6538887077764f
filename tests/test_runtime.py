"""Runtime: backends, DeviceEncoder/DeviceModel/ServerDecoder, bad inputs, bundle evaluation, the serve CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgesplit import bitstream
from edgesplit.bundle import Bundle
from edgesplit.errors import (BackendUnavailable, BitstreamError, BundleError, ConfigError, DataError, EdgesplitError,
                              InferenceError, PluginError)
from edgesplit.preprocess import eval_crop
from edgesplit.runtime import (DeviceEncoder, DeviceModel, ForeignPayloadError, Prediction, ServerDecoder,
                               open_part, open_session)
from edgesplit.runtime.device import predictions_from_logits

from .runtime_fixtures import LABELS, LATENT, PREPROCESS, full_bundle, other_split_bundle, split_bundle  # noqa: F401


def _installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


INSTALLED = [pytest.param(b, marks=pytest.mark.skipif(not _installed(b), reason=f"{b} is not installed"))
             for b in ("onnxruntime", "openvino")]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40 + 3 * i, 52 - 2 * i, 3), dtype=np.uint8) for i in range(5)]


# -- torch-free ---------------------------------------------------------------------------------------------

TORCH_FREE = """
import sys
import numpy as np
import edgesplit.runtime
assert 'torch' not in sys.modules, 'import edgesplit.runtime imported torch'
from edgesplit.runtime import DeviceEncoder, DeviceModel, ServerDecoder
import edgesplit.runtime.service, edgesplit.runtime.evaluate, edgesplit.runtime.cli, edgesplit.runtime.ray_serve
image = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
for backend in ("onnxruntime", "openvino"):
    encoder = DeviceEncoder.open(sys.argv[1], backend=backend, threads=1)
    decoder = ServerDecoder.open(sys.argv[1], backend=backend, threads=1)
    decoder.decode(encoder.encode(image))
    DeviceModel.open(sys.argv[2], backend=backend, threads=1).predict(image)
print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))
"""


def test_runtime_never_imports_torch(split_bundle: Path, full_bundle: Path) -> None:
    out = subprocess.run([sys.executable, "-c", TORCH_FREE, str(split_bundle), str(full_bundle)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_public_api() -> None:
    import edgesplit.runtime as runtime

    for name in runtime.__all__:
        assert hasattr(runtime, name), name


# -- backends ------------------------------------------------------------------------------------------------

def test_backends_are_registered() -> None:
    from edgesplit.registry import available

    assert {"onnxruntime", "openvino", "tensorrt"} <= set(available("backend"))


@pytest.mark.parametrize("backend", INSTALLED)
def test_session_reports_what_it_uses(split_bundle: Path, backend: str) -> None:
    with open_part(Bundle.open(split_bundle), "encoder", backend, device="cpu", threads=1) as session:
        assert session.input_names == ["image"] and session.output_names == ["symbols"]
        assert session.input_shapes["image"] == (None, PREPROCESS.size, PREPROCESS.size, 3)
        assert session.output_shapes["symbols"] == (None, *LATENT)
        assert session.input_dtypes["image"] == np.uint8 and session.output_dtypes["symbols"] == np.int32
        assert session.device == "cpu" and session.threads == 1
        info = session.info()
        assert info["backend"] == backend and info["threads"] == 1
        if backend == "onnxruntime":
            assert info["providers"] == ["CPUExecutionProvider"]
        else:
            assert info["execution_devices"] == ["CPU"] and info["inference_precision"] == "f32"
        out = session.run({"image": np.zeros((3, PREPROCESS.size, PREPROCESS.size, 3), np.uint8)})
        assert out["symbols"].shape == (3, *LATENT) and out["symbols"].dtype == np.int32


@pytest.mark.parametrize("backend", INSTALLED)
def test_session_rejects_bad_inputs_by_name(split_bundle: Path, backend: str) -> None:
    session = open_part(Bundle.open(split_bundle), "encoder", backend, threads=1)
    good = np.zeros((1, PREPROCESS.size, PREPROCESS.size, 3), np.uint8)
    where = f"backend '{backend}' on 'cpu' running encoder"
    with pytest.raises(InferenceError, match=f"{where}.*'image' must have dtype uint8"):
        session.run({"image": good.astype(np.float32)})
    with pytest.raises(InferenceError, match="'image' must have shape Nx32x32x3"):
        session.run({"image": good[:, :16]})
    with pytest.raises(InferenceError, match="missing"):
        session.run({"pixels": good})
    with pytest.raises(InferenceError, match="numpy array"):
        session.run({"image": good.tolist()})
    assert session.run({"image": good})["symbols"].shape == (1, *LATENT)


def _broadcast_graph(path: Path) -> Path:
    """x (N, M) float -> x + [1, 2, 3]: the graph declares M dynamic, so only the runtime finds M != 3 wrong."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["y"])], "broadcast", [x], [y], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.skipif(not _installed("onnxruntime"), reason="onnxruntime is not installed")
def test_runtime_failure_while_running_is_an_inference_error(tmp_path: Path) -> None:
    session = open_session("onnxruntime", _broadcast_graph(tmp_path / "add.onnx"), threads=1)
    np.testing.assert_array_equal(session.run({"x": np.zeros((2, 3), np.float32)})["y"], [[1, 2, 3], [1, 2, 3]])
    with pytest.raises(InferenceError, match=r"backend 'onnxruntime' on 'cpu' running add\.onnx.*x: float32 \(2, 4\)"
                       ) as caught:
        session.run({"x": np.zeros((2, 4), np.float32)})
    assert not isinstance(caught.value, BackendUnavailable)
    cause = caught.value.__cause__
    assert cause is not None and not isinstance(cause, EdgesplitError)  # onnxruntime's own error, kept as the cause


@pytest.mark.skipif(not (_installed("onnxruntime") and _installed("openvino")), reason="needs both backends")
def test_onnxruntime_and_openvino_agree(split_bundle: Path, images: list[np.ndarray]) -> None:
    ort_enc = DeviceEncoder.open(split_bundle, backend="onnxruntime", threads=1)
    ov_enc = DeviceEncoder.open(split_bundle, backend="openvino", threads=1)
    a, b = ort_enc.symbols(images), ov_enc.symbols(images)
    # round(y - median) may flip where float sums differ at a .5 boundary: rare and off by one at most
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01
    ort_dec = ServerDecoder.open(split_bundle, backend="onnxruntime", threads=1)
    ov_dec = ServerDecoder.open(split_bundle, backend="openvino", threads=1)
    la = np.stack([p.logits for p in ort_dec.predict_symbols(a)])
    lb = np.stack([p.logits for p in ov_dec.predict_symbols(a)])
    np.testing.assert_allclose(la, lb, atol=1e-5)


def test_unknown_backend_is_a_plugin_error(split_bundle: Path) -> None:
    with pytest.raises(PluginError, match="did you mean 'onnxruntime'"):
        DeviceEncoder.open(split_bundle, backend="onnxrt")
    with pytest.raises(BackendUnavailable):
        open_session(None, split_bundle / "encoder.onnx")  # type: ignore[arg-type]


def test_tensorrt_is_unavailable_here(tmp_path: Path, split_bundle: Path) -> None:
    if _installed("tensorrt"):
        pytest.skip("tensorrt is installed: this test checks the message without it")
    plan = tmp_path / "encoder.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(BackendUnavailable, match=r"pip install edgesplit\[tensorrt\]"):
        open_session("tensorrt", plan, device="cuda")
    with pytest.raises(BundleError, match="not exported for backend 'tensorrt'"):
        DeviceEncoder.open(split_bundle, backend="tensorrt")


@pytest.mark.skipif(not _installed("onnxruntime"), reason="onnxruntime is not installed")
def test_no_silent_device_fallback(split_bundle: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
            open_session("onnxruntime", split_bundle / "encoder.onnx", device="cuda")
    with pytest.raises(BackendUnavailable, match="unknown device"):
        open_session("onnxruntime", split_bundle / "encoder.onnx", device="tpu")
    with pytest.raises(ConfigError, match="threads"):
        open_session("onnxruntime", split_bundle / "encoder.onnx", threads=0)


@pytest.mark.skipif(not _installed("openvino"), reason="openvino is not installed")
def test_openvino_device_must_exist(split_bundle: Path) -> None:
    import openvino

    xml = split_bundle / "openvino" / "encoder.xml"
    if "NPU" not in openvino.Core().available_devices:
        with pytest.raises(BackendUnavailable, match="not available here"):
            open_session("openvino", xml, device="npu")
    with pytest.raises(BackendUnavailable, match="name one device"):
        open_session("openvino", xml, device="auto")


def test_unreadable_model_file_is_a_bundle_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(BundleError):
        open_session("onnxruntime", bad)
    with pytest.raises(BundleError, match="no such model file"):
        open_session("onnxruntime", tmp_path / "missing.onnx")


# -- device and server ---------------------------------------------------------------------------------------

def test_round_trip_equals_running_the_graphs_directly(split_bundle: Path, images: list[np.ndarray]) -> None:
    import onnxruntime as ort

    encoder = DeviceEncoder.open(split_bundle, threads=1)
    decoder = ServerDecoder.open(split_bundle, threads=1, top_k=2)
    payloads = encoder.encode_batch(images)
    assert set(encoder.last_timings) >= {"preprocess_ms", "graph_ms", "entropy_ms", "total_ms"}
    predictions = decoder.decode_batch(payloads)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    enc = ort.InferenceSession(str(split_bundle / "encoder.onnx"), options, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(split_bundle / "decoder.onnx"), options, providers=["CPUExecutionProvider"])
    crops = np.stack([eval_crop(image, PREPROCESS) for image in images])
    symbols = enc.run(None, {"image": crops})[0]
    logits = dec.run(None, {"symbols": symbols})[0]

    codec = Bundle.open(split_bundle).codec()
    for payload, expected in zip(payloads, symbols):
        frame = bitstream.unpack(payload, expected_fingerprint=encoder.fingerprint)
        assert frame.shape == LATENT and frame.codec == "factorized-v3"
        np.testing.assert_array_equal(codec.decode(frame.body, frame.shape), expected)
    np.testing.assert_allclose(np.stack([p.logits for p in predictions]), logits, atol=1e-5)
    for p, row in zip(predictions, logits):
        assert isinstance(p, Prediction) and len(p.classes) == 2 and p.top1 == LABELS[int(row.argmax())]
        assert p.probs[0] >= p.probs[1] and p.indices[0] == int(row.argmax())
    single = decoder.decode(encoder.encode(images[0]))
    assert single.to_dict() == predictions[0].to_dict()


def test_decode_batch_runs_the_graph_once(split_bundle: Path, images: list[np.ndarray]) -> None:
    encoder = DeviceEncoder.open(split_bundle, threads=1)
    decoder = ServerDecoder.open(split_bundle, threads=1)
    calls = []
    run = decoder.session.run
    decoder.session.run = lambda feeds: calls.append(len(feeds["symbols"])) or run(feeds)  # type: ignore[method-assign]
    payloads = encoder.encode_batch(images)
    assert len(decoder.decode_batch(payloads)) == len(images)
    assert calls == [len(images)]
    with pytest.raises(BitstreamError, match="payload 2 of 5"):
        decoder.decode_batch(payloads[:2] + [payloads[2][:-1]] + payloads[3:])
    assert calls == [len(images)], "the graph ran although a payload was bad"
    assert decoder.decode_batch([]) == []
    with pytest.raises(BitstreamError, match="sequence of payloads"):
        decoder.decode_batch(payloads[0])


def test_bad_images(split_bundle: Path) -> None:
    encoder = DeviceEncoder.open(split_bundle, threads=1)
    with pytest.raises(DataError, match="uint8"):
        encoder.encode(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(DataError, match=r"\(H, W, 3\)"):
        encoder.encode(np.zeros((20, 20), np.uint8))
    with pytest.raises(DataError, match="expected an image"):
        encoder.encode(42)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="encode_batch"):
        encoder.encode([np.zeros((20, 20, 3), np.uint8)])  # type: ignore[arg-type]
    with pytest.raises(DataError, match="use encode"):
        encoder.encode_batch(np.zeros((20, 20, 3), np.uint8))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no such image file"):
        encoder.encode("/nonexistent/cat.jpg")
    assert encoder.encode_batch([]) == []
    # a 4-D array is a batch
    assert len(encoder.encode_batch(np.zeros((2, 20, 20, 3), np.uint8))) == 2


def test_bad_payloads(split_bundle: Path, other_split_bundle: Path, images: list[np.ndarray]) -> None:
    encoder = DeviceEncoder.open(split_bundle, threads=1)
    decoder = ServerDecoder.open(split_bundle, threads=1)
    payload = encoder.encode(images[0])
    foreign = DeviceEncoder.open(other_split_bundle, threads=1).encode(images[0])
    with pytest.raises(ForeignPayloadError, match="does not match this bundle"):
        decoder.decode(foreign)
    assert issubclass(ForeignPayloadError, BitstreamError)
    with pytest.raises(BitstreamError, match="truncated"):
        decoder.decode(payload[:-6])
    with pytest.raises(BitstreamError, match="truncated"):
        decoder.decode(payload[:5])
    with pytest.raises(BitstreamError, match="CRC32"):
        decoder.decode(payload[:20] + bytes([payload[20] ^ 1]) + payload[21:])
    with pytest.raises(BitstreamError, match="must be bytes"):
        decoder.decode("not bytes")  # type: ignore[arg-type]
    frame = bitstream.unpack(payload)
    for shape, match in (((4, 8, 4), "latent shape"), ((4, 64, 64), "max_elements")):
        wrong = bitstream.pack(frame.body, fingerprint=frame.fingerprint, shape=shape, codec=frame.codec)
        with pytest.raises(BitstreamError, match=match):
            decoder.decode(wrong)
    # a larger latent from another bundle is still named as foreign, never decoded
    big = bitstream.pack(b"\0" * 8, fingerprint=b"\1" * 8, shape=(4, 64, 64), codec=frame.codec)
    with pytest.raises(ForeignPayloadError):
        decoder.decode(big)
    # well-framed (CRC fine) but not a valid codec payload
    for body, match in ((b"\1\2\3", "corrupted"), (b"\1\2\0", "zero byte")):
        corrupt = bitstream.pack(body, fingerprint=frame.fingerprint, shape=LATENT, codec=frame.codec)
        with pytest.raises(BitstreamError, match=match):
            decoder.decode(corrupt)


def test_wrong_bundle_kind(split_bundle: Path, full_bundle: Path) -> None:
    with pytest.raises(BundleError, match="use DeviceEncoder"):
        DeviceModel.open(split_bundle)
    with pytest.raises(BundleError, match="use DeviceModel"):
        DeviceEncoder.open(full_bundle)
    with pytest.raises(BundleError, match="use DeviceModel"):
        ServerDecoder.open(full_bundle)
    with pytest.raises(BundleError, match="not a bundle directory"):
        DeviceEncoder.open(split_bundle / "nothing-here")
    with pytest.raises(BundleError, match="expected a bundle"):
        DeviceEncoder.open(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", INSTALLED)
def test_device_model(full_bundle: Path, images: list[np.ndarray], backend: str) -> None:
    import onnxruntime as ort

    model = DeviceModel.open(Bundle.open(full_bundle), backend=backend, threads=1, top_k=2)
    predictions = model.predict_batch(images)
    assert set(model.last_timings) >= {"preprocess_ms", "graph_ms", "total_ms"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    direct = ort.InferenceSession(str(full_bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    logits = direct.run(None, {"image": np.stack([eval_crop(im, PREPROCESS) for im in images])})[0]
    np.testing.assert_allclose(np.stack([p.logits for p in predictions]), logits, atol=1e-5)
    assert model.predict(images[1]).classes == predictions[1].classes
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    for p, row in zip(predictions, softmax):
        best = np.argsort(-row, kind="stable")[:2]
        assert p.indices == tuple(best) and p.classes == tuple(LABELS[i] for i in best)
        np.testing.assert_allclose(p.probs, row[best], rtol=0, atol=1e-5)


def test_prediction_classes_and_the_deprecated_labels() -> None:
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
    first, second = predictions_from_logits(logits, LABELS, top_k=2, names=["Apple", "Banana", "Cherry"])
    assert first.classes == ("banana", "cherry") and first.indices == (1, 2) and first.names == ("Banana", "Cherry")
    assert second.classes == ("apple", "banana") and second.top1 == "apple" and second.top1_name == "Apple"
    answer = first.to_dict()
    assert answer["classes"] == ["banana", "cherry"] and answer["top1"] == "banana" and "labels" not in answer
    with pytest.warns(DeprecationWarning, match="Prediction.classes"):
        assert first.labels == first.classes


def test_missing_backend_files(tmp_path: Path, split_bundle: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(split_bundle, copy)
    (copy / "openvino" / "decoder.bin").unlink()
    with pytest.raises(BundleError, match="missing"):
        ServerDecoder.open(copy, backend="openvino")
    # a bundle exported without openvino: the error names the backends it has
    manifest = yaml.safe_load((split_bundle / "manifest.yaml").read_text())
    for part in ("encoder", "decoder"):
        del manifest["parts"][part]["openvino"]
    shutil.rmtree(copy)
    shutil.copytree(split_bundle, copy)
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    with pytest.raises(BundleError, match=r"not exported for backend 'openvino' \(available: onnxruntime\)"):
        DeviceEncoder.open(copy, backend="openvino")


def test_bundle_exported_with_word_aligned_payloads_still_works(tmp_path: Path, split_bundle: Path,
                                                                images: list[np.ndarray]) -> None:
    """A bundle whose manifest names factorized-v1 (exported before v2) codes and decodes v1 payloads."""
    copy = tmp_path / "bundle"
    shutil.copytree(split_bundle, copy)
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    manifest["codec"]["id"] = "factorized-v1"
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    legacy, current = DeviceEncoder.open(copy, threads=1), DeviceEncoder.open(split_bundle, threads=1)
    old, new = legacy.encode_batch(images), current.encode_batch(images)
    for a, b in zip(old, new):
        fa, fb = bitstream.unpack(a), bitstream.unpack(b)
        assert (fa.codec, fb.codec) == ("factorized-v1", "factorized-v3") and len(fa.body) % 4 == 0
    decoder = ServerDecoder.open(copy, threads=1)
    assert [p.to_dict() for p in decoder.decode_batch(old)] == [
        p.to_dict() for p in ServerDecoder.open(split_bundle, threads=1).decode_batch(new)]
    with pytest.raises(BitstreamError, match="factorized-v3"):
        decoder.decode(new[0])  # a server decodes the codec its bundle names, and says so
    manifest["codec"]["id"] = "factorized-v9"
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    with pytest.raises(BundleError, match="factorized-v9"):
        ServerDecoder.open(copy, threads=1)


# -- evaluation ----------------------------------------------------------------------------------------------

def test_evaluate_bundle(split_bundle: Path, full_bundle: Path, image_folder: Path) -> None:
    from edgesplit.runtime.evaluate import evaluate_bundle

    split = evaluate_bundle(split_bundle, image_folder, threads=1)
    assert split["images"] == 24 and split["kind"] == "split"
    # top-1 counts the deployed path's answers: images filed under the class the bundle predicts score 1, under
    # another class 0, and the first folder scores the share of images whose folder is the predicted class
    encoder, decoder = DeviceEncoder.open(split_bundle, threads=1), ServerDecoder.open(split_bundle, threads=1)
    images = sorted(p for p in image_folder.rglob("*") if p.is_file())
    predicted = [decoder.decode(encoder.encode(p)).indices[0] for p in images]
    truth = [LABELS.index(p.parent.name) for p in images]
    assert split["top1"] == pytest.approx(np.mean(np.equal(predicted, truth)))
    for shift, want in ((0, 1.0), (1, 0.0)):
        relabeled = image_folder.parent / f"relabeled{shift}"
        for c in LABELS:
            (relabeled / c).mkdir(parents=True)
        for p, k in zip(images, predicted):
            shutil.copy(p, relabeled / LABELS[(k + shift) % len(LABELS)] / f"{p.parent.name}_{p.name}")
        assert evaluate_bundle(split_bundle, relabeled, threads=1)["top1"] == want
    assert 20 < split["mean_payload_bytes"] < 1000 and split["latent_shape"] == list(LATENT)
    val = evaluate_bundle(split_bundle, image_folder, limit=4, subset="val", threads=1)
    assert val["images"] == 4 and val["subset"] == "val"
    with pytest.warns(DeprecationWarning, match="subset="):
        assert evaluate_bundle(split_bundle, image_folder, limit=4, split="val", threads=1)["images"] == 4
    full = evaluate_bundle(full_bundle, image_folder, backend="openvino", limit=5, threads=1)
    assert full["images"] == 5 and "mean_payload_bytes" not in full and full["backend"] == "openvino"
    with pytest.raises(ConfigError, match="train_split"):
        evaluate_bundle(full_bundle, image_folder, subset="val")


def test_eval_cli_on_a_bundle(split_bundle: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgesplit.cli import main

    assert main(["eval", str(split_bundle), "--data", str(image_folder), "--limit", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 3 and "mean_payload_bytes" in result


# -- serve CLI -----------------------------------------------------------------------------------------------

def test_serve_cli_parses_and_checks_the_token(split_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from edgesplit.cli import _build_parser, main

    args = _build_parser().parse_args(["serve", str(split_bundle), "--max-batch", "8", "--engine", "ray"])
    assert args.max_batch == 8 and args.engine == "ray" and args.port == 8000 and args.host == "127.0.0.1"
    monkeypatch.delenv("EDGESPLIT_TEST_TOKEN", raising=False)
    assert main(["serve", str(split_bundle), "--token-env", "EDGESPLIT_TEST_TOKEN"]) == 2
    assert "EDGESPLIT_TEST_TOKEN is not set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _build_parser().parse_args(["serve", str(split_bundle), "--max-batch", "0"])


def test_cli_module_imports_nothing_heavy() -> None:
    code = ("import sys, edgesplit.runtime.cli; heavy = {'numpy', 'onnxruntime', 'openvino', 'fastapi', 'ray', "
            "'torch'}; print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_manifest_runtime_options_and_batch_caps(tmp_path: Path, split_bundle: Path,
                                                 images: list[np.ndarray]) -> None:
    """``runtime.<backend>`` in the manifest reaches the backend; a capped session batch is chunked."""
    copy = tmp_path / "bundle"
    shutil.copytree(split_bundle, copy)
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    manifest["runtime"] = {"onnxruntime": {"session.intra_op.allow_spinning": "0"}, "openvino": "not a mapping"}
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    encoder = DeviceEncoder.open(copy, threads=1)
    with pytest.raises(BundleError, match="runtime.openvino"):
        DeviceEncoder.open(copy, backend="openvino", threads=1)
    decoder = ServerDecoder.open(copy, threads=1)
    payloads = encoder.encode_batch(images)
    reference = [p.logits for p in decoder.decode_batch(payloads)]
    calls = []
    run = decoder.session.run
    decoder.session.run = lambda feeds: calls.append(len(feeds["symbols"])) or run(feeds)  # type: ignore[method-assign]
    decoder.session.max_batch = encoder.session.max_batch = 2
    np.testing.assert_allclose([p.logits for p in decoder.decode_batch(payloads)], reference, atol=1e-6)
    assert calls == [2, 2, 1]
    assert encoder.encode_batch(images) == payloads


# -- TensorRT, against fakes of tensorrt and cuda-python (no GPU here) ---------------------------------------

class _FakeCuda:
    """cuda-python's runtime calls the session makes: host memory stands in for device memory."""

    class cudaMemcpyKind:  # noqa: N801 - cuda-python's names
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self) -> None:
        import ctypes

        self._ctypes = ctypes
        self.buffers: dict[int, object] = {}
        self.freed: list[int] = []
        self.fail_sync = False

    def cudaGetDeviceCount(self) -> tuple[int, int]:  # noqa: N802
        return 0, 1

    def cudaSetDevice(self, index: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:  # noqa: N802
        return 0, 7

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:  # noqa: N802
        buffer = self._ctypes.create_string_buffer(nbytes)
        self.buffers[self._ctypes.addressof(buffer)] = buffer
        return 0, self._ctypes.addressof(buffer)

    def cudaFree(self, ptr: int) -> tuple[int]:  # noqa: N802
        self.freed.append(int(ptr))
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> tuple[int]:  # noqa: N802
        self._ctypes.memmove(int(dst), int(src), nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:  # noqa: N802
        return (700,) if self.fail_sync else (0,)


def _fake_tensorrt(max_batch: int) -> object:
    """A tensorrt module whose engine maps x (N, 3) float32 to y = 2 x, with a profile up to ``max_batch``."""
    import ctypes
    import types

    trt = types.ModuleType("tensorrt")

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.fail = False

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes["x"] = self.shapes["y"] = tuple(shape)
            return 1 <= shape[0] <= max_batch

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.shapes[name]

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addresses[name] = ptr

        def execute_async_v3(self, stream: int) -> bool:
            n = int(np.prod(self.shapes["x"]))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["x"]))
            np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["y"]))[:] = 2 * x
            return not self.fail

    class Engine:
        num_io_tensors = 2

        def __init__(self) -> None:
            self.context = Context()

        def get_tensor_name(self, i: int) -> str:
            return ("x", "y")[i]

        def get_tensor_dtype(self, name: str) -> str:
            return "float"

        def get_tensor_shape(self, name: str) -> tuple[int, int]:
            return (-1, 3)

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "x" else "out"

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, int]]:
            return [(1, 3), (max_batch // 2, 3), (max_batch, 3)]

        def create_execution_context(self) -> Context:
            return self.context

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            return Engine() if plan == b"plan" else None

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    trt.Logger, trt.Runtime = Logger, Runtime  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: np.float32  # type: ignore[attr-defined]
    return trt


def test_tensorrt_session_against_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    cuda = _FakeCuda()
    package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.runtime = cuda  # type: ignore[attr-defined]
    package.bindings = bindings  # type: ignore[attr-defined]
    for name, module in (("tensorrt", _fake_tensorrt(max_batch=4)), ("cuda", package), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cuda)):
        monkeypatch.setitem(sys.modules, name, module)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    session = open_session("tensorrt", plan, device="cuda:0")
    assert session.info() == {"backend": "tensorrt", "device": "cuda:0", "threads": None}
    assert session.max_batch == 4 and session.input_shapes == {"x": (None, 3)}
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run({"x": x})["y"], 2 * x)
    assert sorted(cuda.freed) == sorted(cuda.buffers), "device buffers of the run were not freed"

    with pytest.raises(InferenceError, match="outside the engine's optimization profile"):
        session.run({"x": np.zeros((5, 3), np.float32)})
    cuda.fail_sync = True
    with pytest.raises(InferenceError, match="cudaStreamSynchronize failed with error 700"):
        session.run({"x": x})
    cuda.fail_sync = False
    session._engine.context.fail = True  # type: ignore[attr-defined]
    with pytest.raises(InferenceError, match="execute_async_v3 failed"):
        session.run({"x": x})
    assert sorted(cuda.freed) == sorted(cuda.buffers)

    with pytest.raises(BackendUnavailable, match="NVIDIA GPUs only"):
        open_session("tensorrt", plan, device="cpu")
    with pytest.raises(BackendUnavailable, match="not found"):
        open_session("tensorrt", plan, device="cuda:1")
    plan.write_bytes(b"other GPU")
    with pytest.raises(BackendUnavailable, match="could not deserialize"):
        open_session("tensorrt", plan, device="cuda")
