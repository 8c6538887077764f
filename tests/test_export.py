"""Exporter and bundle: a tiny ResNet-18 exported to ONNX and OpenVINO at fp32/fp16/int8 and compared with torch,
dynamic batch, tampering, atomic failure, the TensorRT paths without TensorRT, the CLI, a split student, and the
golden manifest.

Regenerate the golden manifest after a deliberate schema change:
    EDGESPLIT_UPDATE_GOLDEN=1 pytest tests/test_export.py -k golden
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="export needs torch (pip install edgesplit[train])")
onnx = pytest.importorskip("onnx", reason="export needs onnx (pip install edgesplit[export])")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (pip install edgesplit[export])")
ort = pytest.importorskip("onnxruntime", reason="parity needs onnxruntime (pip install edgesplit[export])")
ov = pytest.importorskip("openvino", reason="the OpenVINO exporter needs openvino (pip install edgesplit[export])")

from edgesplit import registry  # noqa: E402
from edgesplit.bundle import MANIFEST, Bundle  # noqa: E402
from edgesplit.cli import main  # noqa: E402
from edgesplit.errors import BackendUnavailable, BundleError, ConfigError, ExportError  # noqa: E402
from edgesplit.export import REPORT_FILE, export_checkpoint, parse_backends, parse_formats  # noqa: E402
from edgesplit.export import tensorrt as trt_export  # noqa: E402
from edgesplit.plugins.backbones.resnet import resnet18  # noqa: E402
from edgesplit.preprocess import Preprocess  # noqa: E402
from edgesplit.train import to_input  # noqa: E402
from edgesplit.train.checkpoint import load, save_checkpoint  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden" / "manifest_full.yaml"
LABELS = [f"class{i}" for i in range(10)]
SIZE = 32
SPEC = Preprocess.for_size(SIZE)
FAST = {"calib_images": 6, "threads": 1}  # parity on 6 images (batches 1 and 3), one CPU thread


def _calib_folder(root: Path, classes: list[str], per_class: int = 4, seed: int = 3) -> Path:
    """An ImageFolder whose class shows in one colour channel (PNG, larger than the bundle's input)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, size=(40, 48, 3), dtype=np.uint8)
            img[..., c % 3] += 150
            Image.fromarray(img, "RGB").save(root / name / f"{i}.png")
    return root


def _crops(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from edgesplit.data import ImageFolder
    from edgesplit.preprocess import eval_crop

    data = ImageFolder(folder, classes=LABELS)
    return np.stack([eval_crop(s.path, SPEC) for s in data.samples]), data.labels


def _save_resnet(path: Path, calib: Path) -> Path:
    """A tiny ResNet-18 fitted for a few steps to the calibration classes: a random-weight net has logit margins
    so small that int8 noise flips its top-1 on many inputs, which would test nothing."""
    images, labels = _crops(calib)
    x, y = to_input(images, SPEC), torch.from_numpy(labels)
    torch.manual_seed(0)
    model = resnet18(num_classes=len(LABELS), width=0.125).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(x + 0.3 * torch.randn_like(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(model.eval(), path,
                    model_config={"kind": "backbone", "name": "resnet18",
                                  "params": {"num_classes": len(LABELS), "width": 0.125}},
                    labels=LABELS, preprocess=SPEC.to_dict())
    return path


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)


def _ort_session(path: Path) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _runner(bundle: Bundle, part: str, backend: str) -> Any:
    """``run(inputs) -> the part's single output``, from the bundle's file for ``backend`` (one CPU thread)."""
    if backend == "onnxruntime":
        session = _ort_session(bundle.file(part, backend))
        return lambda inputs: session.run(None, inputs)[0]
    hints = bundle.manifest["runtime"]["openvino"]
    compiled = ov.Core().compile_model(str(bundle.file(part, backend)), "CPU",
                                       {**hints, "INFERENCE_NUM_THREADS": 1})
    return lambda inputs: np.array(compiled(inputs)[compiled.output(0)])


def _run(bundle: Bundle, part: str, backend: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return _runner(bundle, part, backend)(inputs)


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


@pytest.fixture(scope="module", autouse=True)
def reuse_onnx_exports() -> Any:
    """Serve repeated torch -> ONNX exports of the same graph (same module type and weights) from a cache: each
    export costs seconds, and the failure tests re-export the fixture's checkpoint. The first export of every graph
    is real; the cache returns its exact bytes."""
    import hashlib

    from edgesplit.export import _graphs

    real = _graphs.export_onnx
    cache: dict[str, bytes] = {}

    def cached(g: Any, path: Path, **kw: Any) -> Any:
        h = hashlib.sha256(f"{type(g.module).__name__}/{g.part}/{kw}".encode())
        for k, v in g.module.state_dict().items():
            h.update(k.encode() + str(v.dtype).encode() + v.detach().contiguous().numpy().tobytes())
        key = h.hexdigest()
        if key not in cache:
            real(g, path, **kw)
            cache[key] = path.read_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cache[key])
        return onnx.load_from_string(cache[key])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_graphs, "export_onnx", cached)
        yield


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _calib_folder(tmp_path_factory.mktemp("calib"), LABELS[:3])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, calib: Path) -> Path:
    return _save_resnet(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", calib)


@pytest.fixture(scope="module")
def torch_model(ckpt: Path) -> Any:
    return load(ckpt)


@pytest.fixture(scope="module")
def fp32_bundle(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    lines: list[str] = []
    bundle = export_checkpoint(ckpt, tmp_path_factory.mktemp("out") / "tiny-fp32", formats="onnx,openvino",
                               progress=lines.append, **FAST)
    assert any("parity onnxruntime" in line for line in lines) and any("bundle" in line for line in lines)
    return bundle


# -- fp32: parity, dynamic batch, one self-contained file, the report ---------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_matches_torch_at_batch_1_and_3(fp32_bundle: Bundle, torch_model: Any, backend: str) -> None:
    bundle = Bundle.open(fp32_bundle.path)
    assert bundle.kind == "full" and bundle.labels == LABELS and bundle.preprocess == SPEC
    run = _runner(bundle, "model", backend)
    for n in (1, 3):  # the same file at two batch sizes
        images = _images(n, seed=10 + n)
        got = run({"image": images})
        with torch.no_grad():
            want = torch_model(to_input(images, SPEC)).numpy()
        assert got.shape == (n, len(LABELS)) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_onnx_is_one_file_with_a_dynamic_batch(fp32_bundle: Bundle) -> None:
    path = fp32_bundle.file("model", "onnxruntime")
    assert sorted(p.name for p in path.parent.glob("*.onnx*")) == ["model.onnx"]  # no external .onnx.data
    model = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert {o.domain: o.version for o in model.opset_import}[""] == fp32_bundle.manifest["opset"] == 18
    image = model.graph.input[0]
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert image.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert model.graph.output[0].name == "logits"
    # the normalization is inside the graph: a uint8 image goes straight in
    assert fp32_bundle.manifest["io"]["model"]["inputs"]["image"] == {"shape": [-1, SIZE, SIZE, 3], "dtype": "uint8"}


def test_report_is_in_the_bundle(fp32_bundle: Bundle) -> None:
    assert REPORT_FILE in fp32_bundle.manifest["files"]
    report = json.loads((fp32_bundle.path / REPORT_FILE).read_text())
    assert report["passed"] and report["precision"] == "fp32"
    rows = {(r["format"], r["part"]): r for r in report["rows"]}
    assert set(rows) == {("onnx", "model"), ("openvino", "model")}
    for row in rows.values():
        assert row["bytes"] > 10_000 and row["latency_ms_b1"] > 0
        assert row["parity"]["max_abs_logits"] <= 1e-4 and row["parity"]["top1_agreement"] == 1.0
    assert report["tensorrt_unsupported_ops"] == {"model": []}  # our graphs parse in TensorRT


def _masked(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its volatile values (hashes, versions, fingerprint) masked; every key stays."""
    m = json.loads(json.dumps(manifest))
    m["fingerprint"] = "<fingerprint>"
    m["files"] = {k: "<sha256>" for k in m["files"]}
    m["versions"] = {k: "<version>" for k in m["versions"]}
    m["source"]["sha256"] = "<sha256>"
    return m


def test_golden_manifest(fp32_bundle: Bundle) -> None:
    got = _masked(fp32_bundle.manifest)
    if os.environ.get("EDGESPLIT_UPDATE_GOLDEN"):
        GOLDEN.write_text("# The manifest of tests/test_export.py's tiny full export, volatile values masked.\n"
                          + yaml.safe_dump(got, sort_keys=False), encoding="utf-8")
    want = yaml.safe_load(GOLDEN.read_text(encoding="utf-8"))
    assert got == want, "the bundle manifest changed; if on purpose, regenerate (see this file's docstring)"
    assert list(got) == list(want)  # key order too: the manifest is read by people


# -- tampering ------------------------------------------------------------------------------------------------------
def _edit_manifest(root: Path, edit: Any) -> None:
    m = yaml.safe_load((root / MANIFEST).read_text())
    edit(m)
    (root / MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))


def _flip_byte(root: Path) -> None:
    p = root / "model.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


TAMPERING = {
    "modified byte": (_flip_byte, "model.onnx does not match its sha256"),
    "missing file": (lambda root: (root / "openvino" / "model.bin").unlink(),
                     "openvino/model.bin listed in the manifest is missing"),
    "path escape": (lambda root: _edit_manifest(root, lambda m: m["files"].update({"../x": "0" * 64})),
                    "escapes the bundle"),
    "part path escape": (lambda root: _edit_manifest(
        root, lambda m: m["parts"]["model"]["onnxruntime"].update(model="../model.onnx")), "not in 'files'"),
    "format version": (lambda root: _edit_manifest(root, lambda m: m.update(format_version=99)), "format_version 99"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampered_bundle_is_refused(fp32_bundle: Bundle, tmp_path: Path, case: str) -> None:
    root = tmp_path / "b"
    shutil.copytree(fp32_bundle.path, root)
    tamper, message = TAMPERING[case]
    tamper(root)
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Bundle.open(root)


# -- fp16 through the CLI ------------------------------------------------------------------------------------------
def test_cli_exports_fp16(ckpt: Path, torch_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny-fp16"
    rc = main(["export", str(ckpt), "--backend", "onnxruntime,openvino", "--precision", "fp16", "--out", str(out),
               "--calib-images", "6", "--threads", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith("backend ") and "latency b1" in captured.out and "model.onnx" in captured.out
    assert "deprecated" not in captured.err
    assert "parity onnxruntime" in captured.err  # progress lines
    bundle = Bundle.open(out)
    assert bundle.manifest["precision"] == "fp16"
    model = onnx.load(str(bundle.file("model", "onnxruntime")))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)  # fp16 compute inside
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 at the edges
    images = _images(3, seed=7)
    with torch.no_grad():
        want = torch_model(to_input(images, SPEC)).numpy()
    for backend in ("onnxruntime", "openvino"):
        got = _run(bundle, "model", backend, {"image": images})
        assert (got.argmax(1) == want.argmax(1)).all()
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-2)  # fp16 rounding of a few-layer net


# -- int8 with labelled calibration images --------------------------------------------------------------------------
def test_int8_quantizes_and_reports_accuracy(ckpt: Path, calib: Path, torch_model: Any, tmp_path: Path) -> None:
    bundle = export_checkpoint(ckpt, tmp_path / "tiny-int8", precision="int8", calib=calib, calib_images=12,
                               threads=1)
    assert bundle.manifest["precision"] == "int8" and "nncf" in bundle.manifest["versions"]
    model = onnx.load(str(bundle.file("model", "onnxruntime")))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    xml = bundle.file("model", "openvino").read_text()
    assert "FakeQuantize" in xml
    report = json.loads((bundle.path / REPORT_FILE).read_text())
    assert report["passed"] and report["calibration"].endswith("(labelled)")
    assert report["tensorrt_unsupported_ops"] == {"model": []}
    for row in report["rows"]:
        assert row["parity"]["top1_agreement"] >= 0.9 and "accuracy_drop" in row["parity"]
    # unseen images of the same classes: int8 keeps every prediction
    images, _ = _crops(_calib_folder(tmp_path / "unseen", LABELS[:3], per_class=3, seed=11))
    with torch.no_grad():
        want = torch_model(to_input(images, SPEC)).numpy().argmax(1)
    for backend in ("onnxruntime", "openvino"):
        got = _run(bundle, "model", backend, {"image": images}).argmax(1)
        np.testing.assert_array_equal(got, want, err_msg=backend)


def test_tensorrt_int8_graph_has_symmetric_qdq(fp32_bundle: Bundle, calib: Path, tmp_path: Path) -> None:
    from edgesplit.export import _onnxruntime

    images, _ = _crops(calib)
    for symmetric, problems in ((True, []), (False, ["DequantizeLinear(uint8 zero point)",
                                                     "QuantizeLinear(uint8 zero point)"])):
        out = tmp_path / f"sym{symmetric}.onnx"
        _onnxruntime.quantize_qdq(fp32_bundle.file("model", "onnxruntime"), out, "image", [images], [],
                                  symmetric=symmetric)
        assert trt_export.unsupported_ops(out) == problems  # TensorRT takes int8 zero points of 0 only


def test_student_export_hook_carries_its_own_qdq(tmp_path: Path) -> None:
    """A QAT student's ``export_module()`` with ``edgesplit.export.qdq.fake_quant`` exports its scales as Q/DQ."""
    from edgesplit.export._graphs import export_onnx, graph_specs
    from edgesplit.export.qdq import fake_quant

    class QConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.register_buffer("w_scale", torch.full((4,), 0.01))
            self.register_buffer("x_scale", torch.tensor(0.05))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = fake_quant(self.conv.weight, self.w_scale, axis=0)
            return torch.nn.functional.conv2d(fake_quant(x, self.x_scale), w, self.conv.bias).mean((2, 3))

    class Student(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # the float model: what training evaluates
            return x.mean((2, 3))

        def export_module(self) -> torch.nn.Module:
            return QConv().eval()

    (g,) = graph_specs(Student().eval(), SPEC)
    model = export_onnx(g, tmp_path / "q.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2 and "Conv" in ops
    assert trt_export.unsupported_ops(model) == []
    image = _images(3, seed=1)
    with torch.no_grad():
        want = g.module(torch.from_numpy(image)).numpy()
    got = _ort_session(tmp_path / "q.onnx").run(None, {"image": image})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# -- failures: nothing partial is left behind -----------------------------------------------------------------------
def test_failed_step_leaves_no_bundle(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgesplit.export import _openvino

    def broken(path: Path) -> Any:
        raise RuntimeError("simulated OpenVINO crash")

    monkeypatch.setattr(_openvino, "convert", broken)
    dest = tmp_path / "never"
    with pytest.raises(ExportError, match="simulated OpenVINO crash"):
        export_checkpoint(ckpt, dest, formats=("onnx", "openvino"), **FAST)
    assert not dest.exists() and _leftovers(dest) == []


def test_failed_parity_raises_with_numbers_and_leaves_no_bundle(ckpt: Path, tmp_path: Path) -> None:
    dest = tmp_path / "strict"
    with pytest.raises(ExportError, match=r"onnxruntime: max_abs_logits [0-9.e+-]+ > -1"):
        export_checkpoint(ckpt, dest, formats="onnx", tolerances={"max_abs_logits": -1.0}, **FAST)
    assert not dest.exists() and _leftovers(dest) == []


def test_existing_bundle_is_not_replaced_without_overwrite(fp32_bundle: Bundle, ckpt: Path) -> None:
    with pytest.raises(BundleError, match="already exists"):
        export_checkpoint(ckpt, fp32_bundle.path, **FAST)
    Bundle.open(fp32_bundle.path)


def test_bad_arguments_are_config_errors(ckpt: Path, tmp_path: Path) -> None:
    assert parse_formats("onnx,openvino,tensorrt") == ["onnxruntime", "openvino", "tensorrt"]
    assert parse_formats(["openvino", "onnxruntime"]) == ["onnxruntime", "openvino"]
    assert parse_backends("onnxruntime, tensorrt") == ["onnxruntime", "tensorrt"]  # the runtime's names
    with pytest.raises(ConfigError, match="unknown export backend 'tflite'; choose from onnxruntime, openvino, "
                                          "tensorrt"):
        parse_formats("onnx,tflite")
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        export_checkpoint(ckpt, tmp_path / "x", precision="int4")


# -- TensorRT without TensorRT --------------------------------------------------------------------------------------
def test_tensorrt_op_check_names_unsupported_ops(fp32_bundle: Bundle) -> None:
    helper = onnx.helper
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("FancyOp", ["a"], ["b"]),
                               helper.make_node("Gelu", ["b"], ["c"], domain="com.microsoft"),
                               helper.make_node("Round", ["c"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert trt_export.unsupported_ops(model) == ["FancyOp", "com.microsoft::Gelu"]
    with pytest.raises(ExportError, match="encoder: FancyOp, com.microsoft::Gelu"):
        trt_export.check_tensorrt_ops({"encoder": model, "model": fp32_bundle.file("model", "onnxruntime")})
    assert {"Round", "Cast", "QuantizeLinear", "DequantizeLinear", "Conv"} <= trt_export.TENSORRT_ONNX_OPS


def test_tensorrt_export_without_tensorrt_is_backend_unavailable(ckpt: Path, tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here; this checks the error a machine without it gives")
    dest = tmp_path / "trt"
    with pytest.raises(BackendUnavailable, match=r"pip install edgesplit\[tensorrt\] on a machine with an NVIDIA GPU"):
        export_checkpoint(ckpt, dest, formats="onnx,tensorrt", **FAST)
    assert not dest.exists() and _leftovers(dest) == []


class _FakeTensorRT:
    """Just enough of the TensorRT 11 Python API to run the plan-building code path without a GPU: records the
    calls and writes a fake plan. What it cannot check is that a real TensorRT builds these graphs."""

    __version__ = "11.0.0-fake"

    def __init__(self) -> None:
        self.calls: list[Any] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                pass

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 1

        class MemoryPoolType:
            WORKSPACE = 0

        class Blob(bytes):
            def serialize(self) -> bytes:
                return bytes(self)

        class Config:
            def __init__(self) -> None:
                self.cache = Blob(b"")

            def add_optimization_profile(self, profile: Any) -> None:
                fake.calls.append(("profile", profile.shapes))

            def create_timing_cache(self, blob: bytes) -> Any:
                fake.calls.append(("cache in", bytes(blob)))
                return Blob(blob + b"+")

            def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def get_timing_cache(self) -> Any:
                return self.cache

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, Any] = {}

            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                self.shapes[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Any:
                fake.calls.append(("network flags", flags))
                return object()

            def create_builder_config(self) -> Any:
                return Config()

            def create_optimization_profile(self) -> Any:
                return Profile()

            def build_serialized_network(self, network: Any, config: Any) -> bytes:
                return b"plan"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Any, logger: Any) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(("parse", Path(path).name))
                return True

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag, self.MemoryPoolType = NetworkDefinitionCreationFlag, MemoryPoolType


def test_tensorrt_plan_path_with_a_fake_tensorrt(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no GPU: the plan's parity is not measured
    bundle = export_checkpoint(ckpt, tmp_path / "trt", formats="onnx,tensorrt", precision="int8", **FAST)
    entry = bundle.manifest["parts"]["model"]["tensorrt"]
    assert entry == {"model": "tensorrt/model.plan", "onnx": "tensorrt/model.onnx"}  # plan next to its ONNX
    assert bundle.file("model", "tensorrt").read_bytes() == b"plan"
    assert trt_export.unsupported_ops(bundle.file("model", "tensorrt", "onnx")) == []  # symmetric int8 Q/DQ
    assert bundle.manifest["tensorrt"]["version"] == "11.0.0-fake"
    assert bundle.manifest["tensorrt"]["batch"] == {"min": 1, "opt": 8, "max": 32}
    assert "tensorrt/timing.cache" in bundle.manifest["files"]
    assert ("network flags", 1 << 1) in fake.calls and ("parse", "model.onnx") in fake.calls
    assert ("profile", {"image": ((1, SIZE, SIZE, 3), (8, SIZE, SIZE, 3), (32, SIZE, SIZE, 3))}) in fake.calls
    report = json.loads((bundle.path / REPORT_FILE).read_text())
    row = next(r for r in report["rows"] if r["format"] == "tensorrt")
    assert row["latency_ms_b1"] is None and row["parity"] == {}


# -- the CLI stays light --------------------------------------------------------------------------------------------
def test_public_api_resolves() -> None:
    import edgesplit.export as api

    assert all(getattr(api, name) is not None for name in api.__all__)
    assert api.TOLERANCES["fp32"]["max_abs_logits"] == 1e-4 and api.PRECISIONS == ("fp32", "fp16", "int8")
    with pytest.raises(AttributeError):
        api.no_such_thing  # noqa: B018


def test_export_cli_module_does_not_import_torch() -> None:
    code = "import sys, edgesplit.export.cli, edgesplit.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


# -- a split student ------------------------------------------------------------------------------------------------
def _tiny_split_checkpoint(ckpt: Path, tmp_path: Path, seed: int) -> tuple[Path, Any]:
    """A tiny Entropic Student on the tiny teacher, saved and reloaded; medians spread so rounding around them
    is exercised."""
    if "entropic" not in registry.available("student"):
        pytest.skip("the split student 'entropic' (edgesplit.plugins.entropic) is not available")
    torch.manual_seed(seed)
    student = registry.create("student", "entropic", teacher=str(ckpt), bottleneck_channels=8, encoder_channels=16,
                              decoder_channels=24)
    with torch.no_grad():
        student.bottleneck.quantiles[:, 0, :] += torch.randn(8, 1) * 0.3
    path = tmp_path / "student.safetensors"
    save_checkpoint(student.eval(), path,
                    model_config={"kind": "student", "name": "entropic", "params": student.recipe_params},
                    labels=LABELS, preprocess=SPEC.to_dict())
    return path, load(path)


def test_split_student_bundle(ckpt: Path, tmp_path: Path) -> None:
    path, student = _tiny_split_checkpoint(ckpt, tmp_path, seed=1)
    bundle = Bundle.open(export_checkpoint(path, tmp_path / "split", **FAST).path)
    m = bundle.manifest
    assert bundle.kind == "split" and set(m["parts"]) == {"encoder", "decoder"}
    assert m["io"]["encoder"]["outputs"]["symbols"]["dtype"] == "int32"
    assert m["io"]["decoder"]["inputs"]["symbols"]["dtype"] == "int32"
    codec = bundle.codec()
    assert m["codec"]["id"] == codec.codec_id and bundle.latent_shape == (8, SIZE // 8, SIZE // 8)
    images = _images(3, seed=9)
    with torch.no_grad():
        want_symbols = student.encode_symbols(to_input(images, SPEC))
        want_logits = student.decode_symbols(want_symbols).numpy()
    want_symbols = want_symbols.numpy()
    for backend in ("onnxruntime", "openvino"):
        encoder, decoder = _runner(bundle, "encoder", backend), _runner(bundle, "decoder", backend)
        for n in (1, 3):  # the same files at two batch sizes
            symbols = encoder({"image": images[:n]})
            assert symbols.dtype == np.int32 and symbols.shape == want_symbols[:n].shape
            assert (symbols == want_symbols[:n]).mean() >= 0.999
            logits = decoder({"symbols": want_symbols[:n]})
            np.testing.assert_allclose(logits, want_logits[:n], rtol=0, atol=1e-4)
        # through the codec: what the server decodes is what the device encoded
        payload = codec.encode(symbols[0])
        np.testing.assert_array_equal(codec.decode(payload, bundle.latent_shape), symbols[0])


def test_runtime_round_trip_equals_torch(ckpt: Path, tmp_path: Path) -> None:
    """DeviceEncoder -> payload -> ServerDecoder on an exported split bundle gives torch's symbols and logits."""
    from edgesplit import bitstream
    from edgesplit.preprocess import eval_crop
    from edgesplit.runtime import DeviceEncoder, ServerDecoder

    path, student = _tiny_split_checkpoint(ckpt, tmp_path, seed=2)
    bundle = export_checkpoint(path, tmp_path / "split", **FAST)
    images = list(np.random.default_rng(4).integers(0, 256, (3, 45, 60, 3), dtype=np.uint8))
    crops = np.stack([eval_crop(im, bundle.preprocess) for im in images])
    with torch.no_grad():
        want_symbols = student.encode_symbols(to_input(crops, bundle.preprocess))
        want_logits = student.decode_symbols(want_symbols).numpy()
    for backend in ("onnxruntime", "openvino"):
        encoder = DeviceEncoder.open(bundle, backend=backend, threads=1)
        decoder = ServerDecoder.open(bundle, backend=backend, threads=1, top_k=3)
        payloads = encoder.encode_batch(images)
        for i, payload in enumerate(payloads):
            frame = bitstream.unpack(payload, expected_fingerprint=bundle.fingerprint)
            np.testing.assert_array_equal(bundle.codec().decode(frame.body, frame.shape), want_symbols[i].numpy())
        for i, pred in enumerate(decoder.decode_batch(payloads)):
            np.testing.assert_allclose(pred.logits, want_logits[i], rtol=0, atol=1e-4)


# -- parity through the runtime's own sessions -----------------------------------------------------------------------
def test_parity_runs_on_the_staged_bundle_through_the_runtime(ckpt: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Export-time parity opens the written (staged, not yet renamed) bundle with ``runtime.backends.open_part`` and
    the manifest's options; what those sessions return is what the report measures."""
    from edgesplit.runtime import backends

    real_open_part, real_open_session = backends.open_part, backends.open_session
    opened: list[tuple[Path, str, str, str, int | None]] = []
    options: dict[str, Any] = {}

    def spy_open_part(bundle: Bundle, part: str, backend: str, device: str = "cpu", threads: int | None = None,
                      **kw: Any) -> Any:
        opened.append((bundle.path, part, backend, device, threads))
        return real_open_part(bundle, part, backend, device, threads, **kw)

    def spy_open_session(backend: str, path: Any, *args: Any, **kw: Any) -> Any:
        options[backend] = kw.get("options")
        session = real_open_session(backend, path, *args, **kw)
        if backend == "openvino":  # a session that is off by 0.5: the report must see it
            run = session.run
            session.run = lambda feeds: {k: v + 0.5 for k, v in run(feeds).items()}  # type: ignore[method-assign]
        return session

    monkeypatch.setattr(backends, "open_part", spy_open_part)
    monkeypatch.setattr(backends, "open_session", spy_open_session)
    dest = tmp_path / "spied"
    bundle = export_checkpoint(ckpt, dest, backends="onnxruntime,openvino", verify=False, **FAST)
    assert [(part, backend, device, threads) for _, part, backend, device, threads in opened] == [
        ("model", "onnxruntime", "cpu", 1), ("model", "openvino", "cpu", 1)]
    assert all(path.name.startswith(f".{dest.name}.partial-") for path, *_ in opened)  # before the rename
    assert options["openvino"] == bundle.manifest["runtime"]["openvino"] == {"INFERENCE_PRECISION_HINT": "f32"}
    report = json.loads((bundle.path / REPORT_FILE).read_text())
    rows = {r["backend"]: r for r in report["rows"]}
    assert rows["onnxruntime"]["parity"]["max_abs_logits"] <= 1e-4
    assert rows["openvino"]["parity"]["max_abs_logits"] == pytest.approx(0.5, abs=1e-3)
    assert not report["passed"] and report["failures"][0].startswith("openvino: max_abs_logits 0.5")
    assert rows["openvino"]["session"]["backend"] == "openvino" and rows["openvino"]["session"]["threads"] == 1


def test_exporter_imports_no_runner_of_its_own() -> None:
    from edgesplit.export import _onnxruntime, _openvino, _parity

    for module, name in ((_onnxruntime, "OrtRunner"), (_openvino, "OvRunner"), (trt_export, "PlanRunner"),
                         (_parity, "Runner")):
        assert not hasattr(module, name), f"{module.__name__}.{name}: parity runs through edgesplit.runtime"


# -- the exporter hooks are registry components ----------------------------------------------------------------------
def test_exporter_kind_has_the_quant_hooks_and_the_exporter_uses_them(ckpt: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from edgesplit.plugins.quant import export_hooks

    assert {"binary", "qdq", "publish"} <= set(registry.available("exporter"))
    hook = registry.create("exporter", "binary")
    assert isinstance(hook, export_hooks.BinaryExportHook)
    assert hook.layer_count(resnet18(num_classes=3, width=0.125)) == 0
    # the exporter asks the registered hook how many binary layers a model has: a hook that says 5 makes the
    # fp16 export of a plain ResNet a binary student's, which exports at fp32 only
    monkeypatch.setattr(export_hooks.BinaryExportHook, "layer_count", lambda self, model: 5)
    with pytest.raises(ConfigError, match=r"a binary student \(5 binary layers\) exports with --precision fp32"):
        export_checkpoint(ckpt, tmp_path / "never", backends="onnxruntime", precision="fp16", **FAST)


def test_qdq_translation_comes_from_the_registered_hook() -> None:
    from edgesplit.export import qdq

    hook = registry.create("exporter", "qdq")
    assert qdq.fake_quant is hook.fake_quant and qdq.INT8_RANGES == hook.int8_ranges
    assert set(qdq.onnx_translations()) == {torch.ops.edgesplit.fake_quant.default}


# -- the manifest as a typed object, and the codec through the registry -----------------------------------------------
def test_manifest_round_trips_in_order_and_keeps_unknown_keys(fp32_bundle: Bundle) -> None:
    from edgesplit.bundle import Manifest

    m = Manifest.from_dict(fp32_bundle.manifest)
    assert m == fp32_bundle.contents and m.kind == "full" and m.parts["model"]["onnxruntime"] == {"model": "model.onnx"}
    assert m.backend_options("openvino") == {"INFERENCE_PRECISION_HINT": "f32"} and m.backend_options("tensorrt") == {}
    out = m.to_dict()
    assert out == fp32_bundle.manifest and list(out) == list(fp32_bundle.manifest)
    newer = {**fp32_bundle.manifest, "x_future": {"a": 1}}
    assert Manifest.from_dict(newer).to_dict()["x_future"] == {"a": 1}
    with pytest.raises(BundleError, match="kind 'half' is not one of split, full"):
        Manifest.from_dict({**fp32_bundle.manifest, "kind": "half"})


def test_bundle_codec_is_built_through_the_registry(ckpt: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _tiny_split_checkpoint(ckpt, tmp_path, seed=1)
    root = tmp_path / "split"
    shutil.copytree(export_checkpoint(path, tmp_path / "exported", backends="onnxruntime", **FAST).path, root)
    _edit_manifest(root, lambda m: m["codec"].update(id="test-codec-v9"))

    class TablesCodec:
        def __init__(self, arrays: dict[str, np.ndarray], codec_id: str) -> None:
            self.arrays, self.codec_id = arrays, codec_id

        @classmethod
        def from_arrays(cls, arrays: dict[str, np.ndarray], *, codec_id: str) -> "TablesCodec":
            return cls(arrays, codec_id)

    def factory(tables: dict[str, np.ndarray]) -> TablesCodec:  # kind codec: called with the bundle's tables
        return TablesCodec.from_arrays(tables, codec_id="test-codec-v9")

    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda kind, name: factory if (kind, name) == ("codec", "test-codec-v9")
                        else real_get(kind, name))
    codec = Bundle.open(root).codec()
    assert isinstance(codec, TablesCodec) and codec.codec_id == "test-codec-v9"
    with np.load(root / "codec.npz") as z:
        assert sorted(codec.arrays) == sorted(z.files)
    _edit_manifest(root, lambda m: m["codec"].update(id="nobody-registers-this"))
    with pytest.raises(BundleError, match="codec.id 'nobody-registers-this' is not one this edgesplit decodes"):
        Bundle.open(root).codec()


def test_cli_format_is_a_deprecated_alias_of_backend(ckpt: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "old-flag"
    rc = main(["export", str(ckpt), "--format", "onnx", "--out", str(out), "--calib-images", "6", "--threads", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert [line for line in captured.err.splitlines() if "deprecated" in line] == [
        "edgesplit export: --format is deprecated; use --backend onnxruntime"]
    assert Bundle.open(out).backends("model") == ["onnxruntime"]
    rc = main(["export", str(ckpt), "--format", "onnx", "--backend", "onnxruntime", "--out", str(tmp_path / "both")])
    assert rc != 0 and "give --backend only" in capsys.readouterr().err
