"""A QAT student exports its own Q/DQ: the learned LSQ steps become the scales of QuantizeLinear/DequantizeLinear
pairs (``export_module`` in ``plugins/quant/qat.py``), and the int8 exporter uses them instead of calibrating.

Tiny ResNet-18 (width 0.125, 10 classes, 32x32), 4-bit inner layers (emulated exactly on the int8 grid) and
8-bit first/last layers, scales initialised by one forward pass on random data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch (pip install edgesplit[train])")
onnx = pytest.importorskip("onnx", reason="export needs onnx (pip install edgesplit[export])")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (pip install edgesplit[export])")
ort = pytest.importorskip("onnxruntime", reason="parity needs onnxruntime (pip install edgesplit[export])")
pytest.importorskip("openvino", reason="the OpenVINO exporter needs openvino (pip install edgesplit[export])")

from edgesplit import registry  # noqa: E402
from edgesplit.errors import ExportError  # noqa: E402
from edgesplit.export import REPORT_FILE, export_checkpoint  # noqa: E402
from edgesplit.plugins.quant.qat import quantized_layers  # noqa: E402
from edgesplit.preprocess import Preprocess  # noqa: E402
from edgesplit.train import to_input  # noqa: E402
from edgesplit.train.checkpoint import load, save_checkpoint  # noqa: E402

LABELS = [f"class{i}" for i in range(10)]
SIZE = 32
SPEC = Preprocess.for_size(SIZE)
PARAMS = {"backbone": "resnet18", "backbone_params": {"width": 0.125}, "weight_bits": 4, "act_bits": 4,
          "num_classes": len(LABELS)}


def _qat() -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.create("student", "qat", **PARAMS)


def test_export_module_needs_initialised_scales() -> None:
    with pytest.raises(ExportError, match="not initialised"):
        _qat().export_module()


def test_export_module_matches_eval_forward_and_leaves_model_alone() -> None:
    model = _qat().train()
    model(torch.randn(8, 3, SIZE, SIZE))  # initialises the steps
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    core = model.export_module()
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(core(x), model(x))  # same arithmetic: the 4-bit grid emulated exactly in int8 Q/DQ
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_qat_exports_its_own_qdq(tmp_path: Path) -> None:
    model = _qat().train()
    model(torch.randn(8, 3, SIZE, SIZE))  # initialises the steps
    ckpt = tmp_path / "qat.safetensors"
    save_checkpoint(model.eval(), ckpt, model_config={"kind": "student", "name": "qat", "params": PARAMS},
                    labels=LABELS, preprocess=SPEC.to_dict())
    said: list[str] = []
    bundle = export_checkpoint(ckpt, tmp_path / "qat-int8", formats=("onnx", "openvino"), precision="int8",
                               calib_images=6, threads=1, progress=said.append)

    # no re-calibration: the exporter took the graph as exported (the model's own Q/DQ), and no NNCF/ORT quantizer
    assert any("the model's own Q/DQ" in line for line in said), said
    assert any("int8 from the model's own Q/DQ" in line for line in said), said
    assert bundle.manifest["precision"] == "int8"
    report = json.loads((tmp_path / "qat-int8" / REPORT_FILE).read_text())
    assert report["passed"] and report["precision"] == "int8"

    path = tmp_path / "qat-int8" / "model.onnx"
    graph = onnx.load(str(path)).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    const = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
             if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    values = {**inits, **const}
    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    layers = quantized_layers(load(ckpt))
    scales = [values[n.input[1]] for n in dqs]
    assert len(qs) == len(dqs) and all(n.input[1] in values for n in qs)
    # every Q/DQ scale is one of the learned steps (nothing calibrated by the exporter) ...
    learned = {name: (m.weight_quant.scale.detach().clamp_min(1e-8).numpy(),
                      m.act_quant.scale.detach().clamp_min(1e-8).numpy().reshape(-1)) for name, m in layers.items()}
    flat = [t for pair in learned.values() for t in pair]
    assert all(any(s.size == t.size and np.array_equal(s.reshape(-1), t) for t in flat) for s in scales)
    # ... every layer has its weight and activation steps in the graph (identical activation Q/DQ pairs on one
    # tensor, e.g. a block's first convolution and its downsample, may be merged into one) ...
    for name, (w, a) in learned.items():
        assert np.array_equal(inits[f"core.{name}.weight_quant.scale"], w)
        assert any(s.size == 1 and np.array_equal(s.reshape(-1), a) for s in scales), name
    # ... and the first convolution's per-output-channel weight steps are the torch parameter, bit for bit
    stem = model.get_submodule("stem.0").weight_quant.scale.detach().numpy()
    assert any(s.shape == stem.shape and np.array_equal(s, stem) for s in scales)
    # onnxruntime vs the torch model's eval forward on unseen images. The Q/DQ graph computes the same arithmetic
    # (observed bit-exact with onnxruntime 1.x on CPU), but it is not guaranteed: a runtime may fuse Q/DQ into
    # integer kernels (int32 accumulation, BatchNorm folded into the bias, x * (1/s) in QuantizeLinear), so an
    # element whose x/s lies within float error of a rounding tie can land one step away and that step propagates.
    # Top-1 must agree on every image; logits within 2% of their range (a few tie flips move them far less).
    images = np.random.default_rng(7).integers(0, 256, size=(16, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = model.eval()(to_input(images, SPEC)).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": images})[0]
    assert got.shape == ref.shape
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert np.abs(got - ref).max() <= 0.02 * (ref.max() - ref.min())
