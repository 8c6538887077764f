"""Quantized and binary students in bundles.

A QAT student exports its own Q/DQ: the learned LSQ steps become the scales of QuantizeLinear/DequantizeLinear
pairs (``export_module`` in ``plugins/quant/qat.py``), and the int8 exporter uses them instead of calibrating,
with the weight quantizers folded into int8 initializers (``export/_fold.py``; the pass itself: ``test_fold.py``).
Each BatchNorm is folded into the quantized convolution before it (integers kept, negated where the BatchNorm's
factor is negative; step times |factor|; shift as bias), so onnxruntime runs the convolutions whose output the
model quantizes as QLinearConv. Tiny ResNet-18 (width 0.125, 10 classes, 32x32), 4-bit (emulated exactly on the
int8 grid) or 8-bit inner layers and 8-bit first/last layers, BatchNorm gains (some negative) and statistics drawn
at random, scales initialised by one eval-mode forward pass on random data.

A binary student exports ``model.onnx`` (binary layers as INT8 Q/DQ) and ``binary/model.npz`` (1 bit per binary
weight), from which the runtime builds OpenVINO's ``BinaryConvolution`` graph at load time, without torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="export needs torch (pip install edgesplit[train])")
onnx = pytest.importorskip("onnx", reason="export needs onnx (pip install edgesplit[export])")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (pip install edgesplit[export])")
ort = pytest.importorskip("onnxruntime", reason="parity needs onnxruntime (pip install edgesplit[export])")
pytest.importorskip("openvino", reason="the OpenVINO exporter needs openvino (pip install edgesplit[export])")

from edgesplit import registry  # noqa: E402
from edgesplit.bundle import MANIFEST, Bundle  # noqa: E402
from edgesplit.cli import main  # noqa: E402
from edgesplit.errors import BundleError, ConfigError, ExportError  # noqa: E402
from edgesplit.export import REPORT_FILE, TOLERANCES, export_checkpoint, report_table  # noqa: E402
from edgesplit.export import tensorrt as trt_export  # noqa: E402
from edgesplit.plugins.quant._lowering import lower  # noqa: E402
from edgesplit.plugins.quant.binary import binary_layers  # noqa: E402
from .runtime_fixtures import calibrated_binary  # noqa: E402
from edgesplit.export.onnx_binary import INT8_NOTE  # noqa: E402
from edgesplit.plugins.quant._bn_fold import ChannelBias  # noqa: E402
from edgesplit.plugins.quant.qat import quantized_layers  # noqa: E402
from edgesplit.preprocess import Preprocess, eval_crop  # noqa: E402
from edgesplit.runtime import DeviceModel, open_part, open_session  # noqa: E402
from edgesplit.binary_net import InputSpec, load_net, save_net  # noqa: E402
from edgesplit.train import to_input  # noqa: E402
from edgesplit.train.checkpoint import load, save_checkpoint  # noqa: E402

LABELS = [f"class{i}" for i in range(10)]
SIZE = 32
SPEC = Preprocess.for_size(SIZE)
PARAMS = {"backbone": "resnet18", "backbone_params": {"width": 0.125}, "weight_bits": 4, "act_bits": 4,
          "num_classes": len(LABELS)}


def _qat(**params: Any) -> torch.nn.Module:
    """A tiny QAT student (eval mode, steps not initialised) whose BatchNorms have random gains (about one in six
    negative), shifts and running statistics, as a trained one has; a fresh ResNet's are 1 (0 for each block's
    last), 0, 0 and 1, which would make the BatchNorm fold trivial."""
    torch.manual_seed(0)
    model = registry.create("student", "qat", **{**PARAMS, **params})
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            n = bn.num_features
            bn.weight.copy_(torch.randn(n) * 0.5 + 0.5)
            bn.bias.copy_(torch.randn(n) * 0.2)
            bn.running_mean.copy_(torch.randn(n) * 0.2)
            bn.running_var.copy_(torch.rand(n) + 0.5)
    return model.eval()


# the convolution each BatchNorm of the tiny ResNet reads (what export_module must fold, and nothing else)
def _resnet_pairs(model: torch.nn.Module) -> dict[str, str]:
    names = dict(model.named_modules())
    pairs = {"stem.1": "stem.0"}
    for name in names:
        if name.endswith((".bn1", ".bn2")):
            pairs[name] = name[:-3] + "conv" + name[-1]
        elif name.endswith(".downsample.1"):
            pairs[name] = name[:-1] + "0"
    return pairs


def _folded_weight(model: torch.nn.Module, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """The integer codes and per-channel steps a BatchNorm fold must give, computed here from the model: codes q
    times sign(f), steps s |f| (float64, rounded to float32), f = gamma / sqrt(var + eps); f == 0: codes 0, step s."""
    layer, norm = model.get_submodule(conv), model.get_submodule(bn)
    q = layer.weight_quant.integers(layer.weight).numpy().astype(np.int64)
    s = layer.weight_quant.scale.detach().clamp_min(1e-8).double().numpy()
    f = (norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)).numpy()
    codes = q * np.sign(f).astype(np.int64).reshape(-1, 1, 1, 1)
    return codes, np.where(f == 0, s, s * np.abs(f)).astype(np.float32)


def test_export_module_needs_initialised_scales() -> None:
    with pytest.raises(ExportError, match="not initialised"):
        _qat().export_module()


def _bn_outputs(model: torch.nn.Module, pairs: dict[str, str], x: torch.Tensor) -> dict[str, Any]:
    """Each paired convolution's input and its BatchNorm's output in ``model``'s eval forward on ``x``."""
    seen: dict[str, Any] = {}
    hooks = []
    for bn, conv in pairs.items():  # clones: the ReLUs after the BatchNorms work in place
        hooks.append(model.get_submodule(conv).register_forward_pre_hook(
            lambda m, args, conv=conv: seen.__setitem__(conv, args[0].clone())))
        hooks.append(model.get_submodule(bn).register_forward_hook(
            lambda m, args, out, bn=bn: seen.__setitem__(bn, out.clone())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("bits", [4, 8])
def test_export_module_folds_batchnorm_exactly_and_leaves_model_alone(bits: int) -> None:
    """Folding BatchNorm into the quantized convolutions is the same function, up to float rounding.

    Tolerances. Per layer, fed the same input, the folded convolution (its weight's int8 Q/DQ at the folded steps,
    the new bias) matches convolution + BatchNorm within 1e-5 of the output's magnitude (two float32 evaluations of
    one expression; observed <= 7e-7). End to end, a value that float rounding moves across a rounding tie of the
    next quantizer lands one step away and that step propagates, so the logits are compared with 1% of their range
    and the top-1 class must be the same on every image (observed: equal, or 0.3% of the range)."""
    model = _qat(weight_bits=bits, act_bits=bits)
    model(torch.randn(8, 3, SIZE, SIZE))  # initialises the steps
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = _resnet_pairs(model)
    assert sum(float(model.get_submodule(bn).weight.detach().min()) < 0 for bn in pairs) >= 10  # negative gains to fold
    core = model.export_module()
    assert core.batchnorm_folding == {"folded": pairs, "kept": {}}
    assert not [n for n, m in core.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn, conv in pairs.items():  # the folded steps and codes, and the convolution's new bias
        codes, steps = _folded_weight(model, conv, bn)
        layer = core.get_submodule(conv)
        assert np.array_equal(layer.weight_quant.scale.numpy(), steps), conv
        w = torch.round(layer.weight / layer.weight_quant.scale.view(-1, 1, 1, 1))
        assert np.array_equal(w.numpy().astype(np.int64), codes), conv
        b = model.get_submodule(conv).weight_quant.bits  # 8 for the first convolution
        assert -128 <= codes.min() and codes.max() <= min(127, 2 ** (b - 1)), conv  # 4 bits: -8 negated is 8
        # the shift: the convolution's bias where an 8-bit quantizer reads its output through the ReLU (each block's
        # first convolution at 8 bits), else an addition after it (where onnxruntime would round a bias to int32)
        inside = bits == 8 and conv.endswith(".conv1")
        assert (layer.bias is not None) == inside, conv
        assert isinstance(core.get_submodule(bn), torch.nn.Identity if inside else ChannelBias), conv

    x = torch.randn(16, 3, SIZE, SIZE)
    seen = _bn_outputs(model, pairs, x)
    with torch.no_grad():
        for bn, conv in pairs.items():
            got, want = core.get_submodule(bn)(core.get_submodule(conv)(seen[conv])), seen[bn]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()), msg=conv)
        ref, out = model(x), core(x)
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert float((out - ref).abs().max()) <= 0.01 * float(ref.max() - ref.min())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_export_module_keeps_a_batchnorm_int8_cannot_fold() -> None:
    """8-bit weights span [-128, 127]: a channel whose BatchNorm factor is negative and whose integers reach -128
    would need +128, so that one BatchNorm stays (exact as it is); the others are still folded."""
    model = _qat(weight_bits=8, act_bits=8)
    model(torch.randn(8, 3, SIZE, SIZE))
    conv, bn = model.get_submodule("stage2.0.conv2"), model.get_submodule("stage2.0.bn2")
    with torch.no_grad():
        c = int(torch.argmax(bn.weight))  # a positive channel made negative, its first weight at -128 steps
        bn.weight[c] = -bn.weight[c]
        conv.weight[c, 0, 0, 0] = -128 * conv.weight_quant.scale[c]
    assert int(conv.weight_quant.integers(conv.weight)[c].min()) == -128
    core = model.export_module()
    assert list(core.batchnorm_folding["kept"]) == ["stage2.0.bn2"]
    assert "-128" in core.batchnorm_folding["kept"]["stage2.0.bn2"]
    assert len(core.batchnorm_folding["folded"]) == len(_resnet_pairs(model)) - 1
    assert isinstance(core.get_submodule("stage2.0.bn2"), torch.nn.BatchNorm2d)
    assert core.get_submodule("stage2.0.conv2").bias is None
    x = torch.randn(16, 3, SIZE, SIZE)
    with torch.no_grad():
        ref, out = model(x), core(x)
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert float((out - ref).abs().max()) <= 0.01 * float(ref.max() - ref.min())


class _QatExport(NamedTuple):
    bits: int
    model: torch.nn.Module  # eval mode, steps initialised
    ckpt: Path
    bundle: Bundle
    said: list[str]  # the exporter's progress lines


@pytest.fixture(scope="module", params=[4, 8], ids=["int4", "int8"])
def qat_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> _QatExport:
    """A tiny QAT student (4-bit or 8-bit inner layers, 8-bit first and last) exported to onnx and openvino."""
    bits = request.param
    params = {**PARAMS, "weight_bits": bits, "act_bits": bits}
    model = _qat(**params)
    model(torch.randn(8, 3, SIZE, SIZE))  # initialises the steps
    root = tmp_path_factory.mktemp(f"qat{bits}")
    ckpt = root / "qat.safetensors"
    save_checkpoint(model.eval(), ckpt, model_config={"kind": "student", "name": "qat", "params": params},
                    labels=LABELS, preprocess=SPEC.to_dict())
    said: list[str] = []
    bundle = export_checkpoint(ckpt, root / "qat-int8", formats=("onnx", "openvino"), precision="int8",
                               calib_images=6, threads=1, progress=said.append)
    return _QatExport(bits, model, ckpt, bundle, said)


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' tensors by name."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    const = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
             if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    return {**inits, **const}


def test_qat_exports_its_own_qdq(qat_export: _QatExport) -> None:
    model, ckpt, bundle, said = qat_export.model, qat_export.ckpt, qat_export.bundle, qat_export.said

    # no re-calibration: the exporter took the graph as exported (the model's own Q/DQ), and no NNCF/ORT quantizer
    assert any("the model's own Q/DQ" in line for line in said), said
    assert any("int8 from the model's own Q/DQ" in line for line in said), said
    assert bundle.manifest["precision"] == "int8"
    report = json.loads((bundle.path / REPORT_FILE).read_text())
    assert report["passed"] and report["precision"] == "int8"

    path = bundle.path / "model.onnx"
    graph = onnx.load(str(path)).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    values = _constants(graph)
    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    layers = quantized_layers(load(ckpt))
    scales = [values[n.input[1]] for n in dqs]
    # the activations' Q/DQ pairs, and one DequantizeLinear per layer for its weight (folded into int8 at export)
    assert len(qs) + len(layers) == len(dqs) and all(n.input[1] in values for n in qs)
    # every BatchNorm folded into its convolution: none left in the graph, each convolution with a bias
    pairs = _resnet_pairs(model)
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == len(pairs)
    # a bias only in the convolutions onnxruntime runs as integer kernels (Conv -> [Relu] -> Q; 4 bits: none)
    assert [n.name for n in graph.node if n.op_type == "Conv" and len(n.input) == 3] == _quantized_convolutions(graph)
    # every scale is a learned step (nothing calibrated by the exporter): the activations' as learned, the weights'
    # times |gamma / sqrt(var + eps)| of their BatchNorm, bit for bit (the classifier's, with no BatchNorm, as
    # learned); identical activation Q/DQ pairs on one tensor (a block's first convolution and its downsample)
    # may be merged into one
    acts = {name: m.act_quant.scale.detach().clamp_min(1e-8).numpy().reshape(-1) for name, m in layers.items()}
    weights = {conv: _folded_weight(model, conv, bn)[1] for bn, conv in pairs.items()}
    weights["head.fc"] = layers["head.fc"].weight_quant.scale.detach().clamp_min(1e-8).numpy()
    assert set(weights) == set(layers)
    for name in layers:
        assert np.array_equal(inits[f"core.{name}.weight_quant.scale"], weights[name]), name
        assert any(s.size == 1 and np.array_equal(s.reshape(-1), acts[name]) for s in scales), name
    flat = [*acts.values(), *weights.values()]
    assert all(any(s.size == t.size and np.array_equal(s.reshape(-1), t) for t in flat) for s in scales)
    # onnxruntime vs the torch model's eval forward on unseen images. Unoptimized, the Q/DQ graph computes the
    # same arithmetic as torch (observed bit-exact; optimized too at 4 bits, where it runs float convolutions).
    # At 8 bits it runs integer kernels (QLinearConv: int32 accumulation, the bias, i.e. the folded BatchNorm
    # shift, rounded to int32 at scale s_x * s_w, requantization by x * (1/s)), so an element within that distance
    # of a rounding tie of the next quantizer lands one step away, and the step propagates. Top-1 must agree on
    # every image; logits within 2% of their range (observed 0.3%).
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


def test_qat_weights_are_stored_as_int8(qat_export: _QatExport, tmp_path: Path) -> None:
    """The weight quantizers are folded at export: model.onnx stores each layer's weight as its quantizer's integer
    codes (int8, also for 4-bit layers) read by a DequantizeLinear, not the float weight and a QuantizeLinear that
    recomputes the codes on every run; same outputs, a quarter of the weight bytes."""
    from edgesplit.export._graphs import export_onnx, graph_specs

    bundle = qat_export.bundle
    layers = quantized_layers(load(qat_export.ckpt))  # what the exporter saw
    assert any(f"folded {len(layers)} weight quantizers into int8 initializers" in line
               for line in qat_export.said), qat_export.said
    report = json.loads((bundle.path / REPORT_FILE).read_text())
    assert report["passed"] and "fold weight quantizers" in [r["step"] for r in report["steps"]]

    path = bundle.path / "model.onnx"
    folded = onnx.load(str(path))
    onnx.checker.check_model(folded, full_check=True)
    assert [(o.domain, o.version) for o in folded.opset_import] == [("", 18)]
    graph = folded.graph
    values = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    # the QuantizeLinear left quantize activations (computed from the image), never a constant
    def from_image(name: str) -> bool:
        todo, seen = [name], set()
        while todo:
            t = todo.pop()
            if t == "image":
                return True
            if t not in seen and t in producer:
                seen.add(t)
                todo.extend(i for i in producer[t].input if i)
        return False

    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(n.input[0] not in values and from_image(n.input[0]) for n in qs)
    # each layer's weight: the int8 codes of its own quantizer (torch's, bit for bit), negated in the channels
    # whose BatchNorm factor is negative (4 bits: -8 becomes 8, still int8)
    folded = {conv: _folded_weight(qat_export.model, conv, bn)[0] for bn, conv in _resnet_pairs(
        qat_export.model).items()}
    assert any((c < 0).any() for c in folded.values())
    for name, layer in layers.items():
        codes = onnx.numpy_helper.to_array(inits[f"core.{name}.weight_int8"])
        want = folded.get(name, layer.weight_quant.integers(layer.weight).numpy())
        assert codes.dtype == np.int8 and np.abs(codes).max() <= 2 ** (layer.weight_quant.bits - 1), name
        np.testing.assert_array_equal(codes, want, err_msg=name)
        assert f"core.{name}.weight" not in inits, name  # no float copy left
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == len(layers)
    for n in weighted:
        dq = producer[n.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == onnx.TensorProto.INT8, n.name

    # against the graph as torch exports it (float weights, QuantizeLinear at run time)
    (g,) = graph_specs(load(qat_export.ckpt), SPEC)
    unfolded = export_onnx(g, tmp_path / "float-weights.onnx")
    raw = {t.name: onnx.numpy_helper.to_array(t) for t in unfolded.graph.initializer}
    float_bytes = sum(raw[n.input[0]].nbytes for n in unfolded.graph.node
                      if n.op_type == "QuantizeLinear" and n.input[0] in raw)
    int8_bytes = sum(onnx.numpy_helper.to_array(inits[f"core.{name}.weight_int8"]).nbytes for name in layers)
    assert int8_bytes * 4 == float_bytes  # one byte per weight instead of four
    total = sum(onnx.numpy_helper.to_array(t).nbytes for t in graph.initializer)
    assert total < 0.4 * sum(a.nbytes for a in raw.values())
    assert (tmp_path / "float-weights.onnx").stat().st_size - path.stat().st_size >= 0.7 * float_bytes
    # same logits from onnxruntime as before folding (the same integers, dequantized the same way)
    images = np.random.default_rng(11).integers(0, 256, size=(8, SIZE, SIZE, 3), dtype=np.uint8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    before, after = (ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]).run(
        None, {"image": images})[0] for p in (tmp_path / "float-weights.onnx", path))
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(after.argmax(1), before.argmax(1))

def _quantized_convolutions(graph: Any) -> list[str]:
    """Conv nodes whose output the model quantizes and nothing else reads: Conv -> [Relu] -> QuantizeLinear."""
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = []
    for n in graph.node:
        if n.op_type != "Conv":
            continue
        nxt = readers.get(n.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Relu":
            nxt = readers.get(nxt[0].output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "QuantizeLinear":
            out.append(n.name)
    return out


def test_onnxruntime_runs_quantized_convolutions_as_qlinearconv(qat_export: _QatExport, tmp_path: Path) -> None:
    """With BatchNorm folded, a convolution whose output the model quantizes reads DQ(x), DQ(int8 W) and a bias
    and feeds Q (through a ReLU, which the unsigned zero point makes redundant): the pattern onnxruntime fuses into
    QLinearConv. 8 bits: all of them run as QLinearConv in onnxruntime's optimized graph, at both EXTENDED and ALL
    (in a ResNet, each block's first convolution; the others feed the float residual Add, which the model does
    not quantize, so they stay float). 4 bits: the float clamp to the 4-bit grid sits between the convolution and
    its Q, so there are none."""
    assert any("BatchNorm folded into 20 quantized convolutions" in line for line in qat_export.said)
    path = qat_export.bundle.path / "model.onnx"
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops
    fusable = _quantized_convolutions(graph)
    assert len(fusable) == (8 if qat_export.bits == 8 else 0)  # ResNet-18: the first convolution of each block
    for level in ("ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        opts.optimized_model_filepath = str(tmp_path / f"{level}.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        optimized = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
        assert optimized.count("QLinearConv") == len(fusable), (level, sorted(set(optimized)))
        assert optimized.count("Conv") + optimized.count("FusedConv") == ops.count("Conv") - len(fusable), level
        assert "BatchNormalization" not in optimized


# -- binary students: model.onnx (INT8 Q/DQ) + binary/model.npz (packed bits, BinaryConvolution at load) -------------
#
# Tiny Bi-Real ResNet (one block per stage, width 0.125: 8 binary layers, channels 8 to 64), 3 classes named like
# conftest's image folder so `edgesplit eval` can run on it, BatchNorm statistics from two training-mode passes.

BINARY_PARAMS = {"layers": [1, 1, 1, 1], "width": 0.125, "num_classes": 3}
BINARY_LABELS = ["apple", "banana", "cherry"]  # conftest.CLASSES


def _binary_checkpoint(path: Path, **extra: Any) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    params = {**BINARY_PARAMS, **extra}
    model = calibrated_binary(registry.create("student", "binary", **params), SIZE, seed=None)
    save_checkpoint(model, path, model_config={"kind": "student", "name": "binary", "params": params},
                    labels=BINARY_LABELS, preprocess=SPEC.to_dict())
    return path, load(path)  # what the exporter sees: the packed checkpoint, reloaded


@pytest.fixture(scope="module")
def binary_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    return _binary_checkpoint(tmp_path_factory.mktemp("binary") / "binary.safetensors")


@pytest.fixture(scope="module")
def binary_bundle(binary_ckpt: tuple[Path, torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> Any:
    said: list[str] = []
    bundle = export_checkpoint(binary_ckpt[0], tmp_path_factory.mktemp("out") / "binary-fp32",
                               formats="onnx,openvino", calib_images=6, threads=1, progress=said.append)
    assert any("8 binary layers" in line for line in said), said
    return bundle


def _binary_images(n: int, seed: int) -> list[np.ndarray]:
    """Synthetic photos of assorted sizes (the runtime crops them)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(SIZE + 5 * i, SIZE + 9 - 2 * i, 3), dtype=np.uint8) for i in range(n)]


def _torch_logits(model: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    crops = np.stack([eval_crop(image, SPEC) for image in images])
    with torch.no_grad():
        return model(to_input(crops, SPEC)).numpy()


def test_binary_bundle_manifest_and_report(binary_bundle: Any) -> None:
    m = binary_bundle.manifest
    assert m["kind"] == "full" and m["precision"] == "fp32" and m["binary_layers"] == 8
    assert m["parts"]["model"] == {"onnxruntime": {"model": "model.onnx"},
                                   "openvino": {"builder": "binary-v1", "model": "binary/model.npz"}}
    assert {"model.onnx", "binary/model.npz"} <= set(m["files"])  # hashed like every other file
    assert not list(binary_bundle.path.glob("openvino/*"))  # no dense IR
    assert m["io"]["model"] == {"inputs": {"image": {"shape": [-1, SIZE, SIZE, 3], "dtype": "uint8"}},
                                "outputs": {"logits": {"shape": [-1, 3], "dtype": "float32"}}}
    report = json.loads((binary_bundle.path / REPORT_FILE).read_text())
    assert report["passed"] and report["binary"]["layers"] == 8 and report["binary"]["int8_note"] == INT8_NOTE
    rows = {r["format"]: r for r in report["rows"]}
    assert rows["onnx"]["binary"] == {"layers": 8, "runs_as": "INT8 Q/DQ"}
    assert rows["openvino"]["binary"] == {"layers": 8, "runs_as": "BinaryConvolution", "binary_convolutions": 8}
    for row in rows.values():  # parity of both backends against torch, at the tolerances the exporter states
        assert row["parity"]["max_abs_logits"] <= TOLERANCES["fp32"]["max_abs_logits"]
        assert row["parity"]["top1_agreement"] == 1.0 and row["latency_ms_b1"] > 0
        assert row["bytes"] == (binary_bundle.path / row["file"]).stat().st_size
    table = report_table(report)
    assert "8/8 as BinaryConvolution" in table and "8 as INT8 Q/DQ" in table and INT8_NOTE in table


def test_binary_parity_tolerates_a_flipped_activation_but_not_a_wrong_graph() -> None:
    """A 1-bit model's export passes with one image moved by a sign flip at a threshold (what float reordering
    does), fails when every image is off (what a wrong graph does), and an fp32 model passes neither."""
    from edgesplit.export._parity import MATCH_ATOL, Reference, failed_checks, measure

    n = 10
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 3), np.uint8)
    logits = np.zeros((n, 3), np.float32)
    logits[:, 0] = 5.0  # a clear top-1, so the moves below keep it
    ref = Reference(images=images, logits=logits)

    class Runner:
        def __init__(self, delta: np.ndarray) -> None:
            self.delta = delta

        def run(self, inputs: dict) -> dict:
            idx = inputs["image"][:, 0, 0, 0].astype(int)
            return {"logits": logits[idx] + self.delta[idx]}

    one_flip = np.zeros((n, 3), np.float32)
    one_flip[7, 1] = 0.25
    everywhere = np.full((n, 3), 10 * MATCH_ATOL, np.float32)
    flip = measure({"model": Runner(one_flip)}, ref)
    assert flip["logits_match_fraction"] == pytest.approx(0.9) and flip["top1_agreement"] == 1.0
    assert failed_checks("fp32", flip, TOLERANCES["binary"]) == []
    assert failed_checks("fp32", flip, TOLERANCES["fp32"]) == ["max_abs_logits 0.25 > 0.0001 x logits scale 5 = 0.0005"]
    wrong = measure({"model": Runner(everywhere)}, ref)
    assert failed_checks("fp32", wrong, TOLERANCES["binary"]) == ["logits_match_fraction 0 < 0.8"]


def test_binary_onnx_has_the_bundle_contract_and_int8_binary_layers(binary_bundle: Any) -> None:
    proto = onnx.load(str(binary_bundle.file("model", "onnxruntime")))
    (image,), (logits,) = proto.graph.input, proto.graph.output
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 3]  # dynamic batch, NHWC
    assert logits.name == "logits" and logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ops = [n.op_type for n in proto.graph.node]
    assert ops[:2] == ["Cast", "Transpose"] and ops.count("QuantizeLinear") == 8  # normalization inside
    weights = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.startswith("binary_w")]
    assert len(weights) == 8 and all(w.dtype == np.int8 and set(np.unique(w)) <= {-1, 1} for w in weights)
    assert trt_export.unsupported_ops(proto) == []  # TensorRT's parser takes this graph too


def test_binary_npz_stores_one_bit_per_binary_weight(binary_bundle: Any, binary_ckpt: Any) -> None:
    path = binary_bundle.file("model", "openvino")
    layers = binary_layers(binary_ckpt[1])
    counts = [layer.weight.numel() for layer in layers.values()]
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["units.signs"].dtype == np.uint8 and arrays["units.signs"].size == sum(-(-n // 8) for n in counts)
    assert max(a.size for a in arrays.values() if a.dtype == np.float32) < sum(counts)  # no dense +-1 array
    # the file is its arrays plus ~300 bytes of zip and .npy headers each (15 arrays, whatever the depth)
    assert len(arrays) == 15 and path.stat().st_size <= sum(a.nbytes for a in arrays.values()) + 300 * len(arrays)
    weights = json.loads((binary_bundle.path / REPORT_FILE).read_text())["binary"]["weights_bytes"]
    assert weights == {"binary_layers": 8, "binary_weights": sum(counts), "packed": arrays["units.signs"].nbytes,
                       "fp32": 4 * sum(counts)}
    assert weights["fp32"] / weights["packed"] == 32  # every layer's count is a multiple of 8 here


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_binary_device_model_matches_torch(binary_bundle: Any, binary_ckpt: Any, backend: str) -> None:
    images = _binary_images(5, seed=3)
    want = _torch_logits(binary_ckpt[1], images)
    with DeviceModel.open(binary_bundle.path, backend=backend, threads=1, top_k=1) as model:
        assert model.session.input_shapes["image"] == (None, SIZE, SIZE, 3)  # a dynamic batch to callers
        batch = model.predict_batch(images)  # one graph call of 5 images
        single = [model.predict(image) for image in images[:2]]
        if backend == "openvino":
            assert model.session.info()["binary_convolutions"] == 8
    got = np.stack([p.logits for p in batch])
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCES["fp32"]["max_abs_logits"])
    np.testing.assert_array_equal([p.indices[0] for p in batch], want.argmax(1))
    np.testing.assert_allclose(np.stack([p.logits for p in single]), got[:2], rtol=0, atol=1e-6)


def test_binary_bundle_with_rprelu_matches_torch_on_both_backends(tmp_path: Path) -> None:
    path, model = _binary_checkpoint(tmp_path / "rprelu.safetensors", rprelu=True)
    bundle = export_checkpoint(path, tmp_path / "bundle", formats="onnx,openvino", calib_images=4, threads=1)
    with np.load(bundle.path / "binary" / "model.npz") as z:
        assert int(z["format"]) == 2  # the activations travel in the file
    images = _binary_images(4, seed=5)
    want = _torch_logits(model, images)
    for backend in ("onnxruntime", "openvino"):
        with DeviceModel.open(bundle.path, backend=backend, threads=1, top_k=1) as device:
            got = np.stack([p.logits for p in device.predict_batch(images)])
            if backend == "openvino":
                assert device.session.info()["binary_convolutions"] == 8
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCES["fp32"]["max_abs_logits"], err_msg=backend)


def test_binary_openvino_runtime_graph_runs_binary_convolution(binary_bundle: Any) -> None:
    session = open_part(binary_bundle, "model", "openvino", threads=1)
    types = session.layer_types  # binary_layer_types of the compiled model: what OpenVINO's CPU plugin executes
    assert types is not None and types["BinaryConvolution"] == 8 and session.binary_convolutions == 8, types
    # the float convolutions left are the stem and the three 1x1 shortcuts; each FakeQuantize binarizes the input
    # of one BinaryConvolution
    assert types["Convolution"] == 4 and types["FakeQuantize"] == 8
    assert session.info()["builder"] == "binary-v1" and session.info()["inference_precision"] == "f32"


def _copy(bundle: Any, root: Path) -> Path:
    shutil.copytree(bundle.path, root)
    return root


def test_binary_tampered_npz_is_refused(binary_bundle: Any, tmp_path: Path) -> None:
    root = _copy(binary_bundle, tmp_path / "b")
    npz = root / "binary" / "model.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x01  # one sign bit (the packed signs are the middle of the file)
    npz.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"binary/model.npz'? does not match its sha256"):
        Bundle.open(root)
    with pytest.raises(BundleError, match="sha256"):
        DeviceModel.open(root, backend="openvino")


def test_binary_unknown_builder_is_refused(binary_bundle: Any, tmp_path: Path) -> None:
    for backend, builder in (("openvino", "binary-v9"), ("onnxruntime", "binary-v1")):
        root = _copy(binary_bundle, tmp_path / f"{backend}-{builder}")
        manifest = yaml.safe_load((root / MANIFEST).read_text())
        manifest["parts"]["model"][backend]["builder"] = builder
        (root / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        Bundle.open(root)  # the files are intact; the runtime is what cannot build it
        with pytest.raises(BundleError, match=f"graph builder '{builder}' is unknown for backend '{backend}'"):
            DeviceModel.open(root, backend=backend)
    with pytest.raises(BundleError, match="graph builder 'nope' is unknown"):
        open_session("openvino", binary_bundle.file("model", "openvino"), builder="nope")


def test_binary_file_round_trip_and_malformed_files(binary_ckpt: Any, tmp_path: Path) -> None:
    net = lower(binary_ckpt[1])
    spec = InputSpec(SIZE, SPEC.mean, SPEC.std)
    path = tmp_path / "net.npz"
    save_net(path, net, spec)
    back, image = load_net(path)
    assert image == InputSpec(SIZE, tuple(np.float32(SPEC.mean).tolist()), tuple(np.float32(SPEC.std).tolist()))
    assert [b.pool for b in back.blocks] == [b.pool for b in net.blocks]
    for a, b in zip(back.units(), net.units()):
        assert np.array_equal(a.signs, b.signs) and np.array_equal(a.alpha, b.alpha) and a.stride == b.stride
    for a, b in zip([back.stem] + [b.downsample for b in back.blocks], [net.stem] + [b.downsample for b in net.blocks]):
        assert (a is None) == (b is None) and (a is None or np.array_equal(a.weight, b.weight))

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    broken = {
        "short signs": {**arrays, "units.signs": arrays["units.signs"][:-1]},
        "signs as int8": {**arrays, "units.signs": arrays["units.signs"].astype(np.int8)},
        "huge geometry": {**arrays, "units.geometry": arrays["units.geometry"] * 1000},
        "bad shortcut": {**arrays, "blocks": arrays["blocks"] + 7},
        "other builder": {**arrays, "builder": np.array("binary-v2")},
    }
    for bad in broken.values():
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(BundleError, match="re-export the bundle"):
            load_net(tmp_path / "bad.npz")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(BundleError, match="not a readable .npz"):
        load_net(tmp_path / "garbage.npz")


def test_binary_file_with_rprelu_round_trips_and_declares_format_2(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = calibrated_binary(registry.create("student", "binary", **{**BINARY_PARAMS, "rprelu": True}), SIZE)
    net = lower(model)
    path = tmp_path / "net.npz"
    save_net(path, net, InputSpec(SIZE, SPEC.mean, SPEC.std))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    assert int(arrays["format"]) == 2 and arrays["units.act"].shape == (3, sum(u.signs.shape[0] for u in net.units()))
    back, _ = load_net(path)
    for a, b in zip(back.activations(), net.activations()):
        assert a is not None and b is not None
        assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("shift_in", "slope", "shift_out"))
    # a format-1 file (no activations) is still written for Bi-Real blocks, and the two never mix
    plain = lower(calibrated_binary(registry.create("student", "binary", **BINARY_PARAMS), SIZE))
    save_net(tmp_path / "plain.npz", plain, InputSpec(SIZE, SPEC.mean, SPEC.std))
    with np.load(tmp_path / "plain.npz") as z:
        assert int(z["format"]) == 1 and "units.act" not in z.files
    assert all(a is None for a in load_net(tmp_path / "plain.npz")[0].activations())
    broken = {
        "format 2 without activations": {k: v for k, v in arrays.items() if k != "units.act"},
        "short activations": {**arrays, "units.act": arrays["units.act"][:, :-1]},
        "format 1 with activations": {**arrays, "format": np.array(1, np.int64)},
        "format 3": {**arrays, "format": np.array(3, np.int64)},
    }
    for what, bad in broken.items():
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(BundleError, match="re-export the bundle"):
            load_net(tmp_path / "bad.npz")
            pytest.fail(what)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_binary_student_takes_fp32_only(binary_ckpt: Any, tmp_path: Path, precision: str) -> None:
    dest = tmp_path / precision
    with pytest.raises(ConfigError, match=r"binary student \(8 binary layers\) exports with --precision fp32 only"):
        export_checkpoint(binary_ckpt[0], dest, precision=precision, calib_images=6, threads=1)
    assert not dest.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{precision}.")]


def test_binary_bundle_runs_without_torch(binary_bundle: Any, binary_ckpt: Any) -> None:
    code = (
        "import sys, json, numpy as np\n"
        "from edgesplit.runtime import DeviceModel\n"
        "images = [np.random.default_rng(5).integers(0, 256, (40, 36, 3), dtype=np.uint8) for _ in range(2)]\n"
        "out = {b: [p.logits.tolist() for p in DeviceModel.open(sys.argv[1], backend=b, threads=1)"
        ".predict_batch(images)] for b in ('openvino', 'onnxruntime')}\n"
        "out['torch'] = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(binary_bundle.path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["torch"] == []
    want = _torch_logits(binary_ckpt[1], [np.random.default_rng(5).integers(0, 256, (40, 36, 3), dtype=np.uint8)] * 2)
    for backend in ("openvino", "onnxruntime"):
        np.testing.assert_allclose(np.array(out[backend]), want, rtol=0, atol=1e-4, err_msg=backend)


def test_eval_cli_on_a_binary_bundle(binary_bundle: Any, binary_ckpt: Any, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The bundle's top-1 is the torch model's: images filed under the class torch predicts score 1.0 on each
    backend, and 0.0 filed under another class."""
    from PIL import Image

    from .conftest import make_image_folder

    source = make_image_folder(tmp_path / "data", per_class=2)
    paths = sorted(p for p in source.rglob("*") if p.is_file())
    torch_says = _torch_logits(binary_ckpt[1], [np.asarray(Image.open(p).convert("RGB")) for p in paths]).argmax(1)
    for shift, want in ((0, 1.0), (1, 0.0)):
        data = tmp_path / f"filed{shift}"
        for c in BINARY_LABELS:
            (data / c).mkdir(parents=True)
        for p, k in zip(paths, torch_says):
            shutil.copy(p, data / BINARY_LABELS[(int(k) + shift) % 3] / f"{p.parent.name}_{p.name}")
        for backend in ("openvino", "onnxruntime"):
            assert main(["eval", str(binary_bundle.path), "--data", str(data), "--backend", backend, "--json"]) == 0
            result = json.loads(capsys.readouterr().out)
            assert result["backend"] == backend and result["images"] == 6 and result["top1"] == want, backend
