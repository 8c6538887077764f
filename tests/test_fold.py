"""Weight quantizers folded into integer initializers (``edgesplit.export._fold``), on hand-built ONNX graphs: the
folded integers against numpy and onnx's reference QuantizeLinear (per tensor and per channel, int8 and uint8, ties
to even, saturation), constants reached through Constant/Identity/Reshape nodes and constant subgraphs, activation
quantizers left alone, and the graph's outputs unchanged under onnxruntime. Exported QAT students:
``tests/test_quant_export.py``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the pass needs onnx (pip install edgesplit[export])")
ort = pytest.importorskip("onnxruntime", reason="parity needs onnxruntime (pip install edgesplit[export])")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from edgesplit.export._fold import fold_weight_quantizers, quantize_linear  # noqa: E402

F32 = np.float32
# per-channel scales (axis 0) and weights at exact ties: x / s = 0.5, 1.5, -2.5, 1000 (saturates)
S1 = np.array([0.5, 0.25, 2.0, 1.0], F32)
W1 = (S1[:, None] * np.array([0.5, 1.5, -2.5], F32)).astype(F32)
W1[3] = [1000.0, -1000.0, 126.5]
# per-tensor uint8, zero point 128 from a constant subgraph; the weight a Constant behind Identity and Reshape
S2 = np.array(0.5, F32)
W2 = np.array([0.25, 0.75, -1.25, 64.0, 100.0, -100.0, -63.75, 0.0, 0.3, -0.3, 1.0, -1.0], F32)
# per-channel uint8 along axis -1 with zero points 0, 10, 255: saturation on both sides
S3 = np.array([1.0, 0.5, 4.0], F32)
Z3 = np.array([0, 10, 255], np.uint8)
W3 = np.array([[-3.5, -4.5, 2.0], [300.0, 2.25, -6.0], [0.5, -7.0, 1000.0], [2.5, 121.25, -1020.0]], F32)
# per-tensor int8, zero point -3, the scale a 1-element vector
S4 = np.array([0.75], F32)
Z4 = np.array([-3], np.int8)
W4 = np.array([[0.375, -0.375, 1.125], [-1.125, 95.0, -94.0], [0.0, 2.0, -2.0], [7.0, -7.0, 0.1]], F32)


def _node(op: str, inputs: list[str], output: str, **attrs: Any) -> Any:
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs)


def _const(output: str, value: np.ndarray) -> Any:
    return _node("Constant", [], output, value=numpy_helper.from_array(value))


def _model() -> Any:
    """x (4x3) -> y1..y4 = x + DQ(Q(W_k)), a = DQ(Q(x)) (activation quantizer), shared = x * W1 (W1 stays)."""
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", W1), ("s1", S1), ("z1", np.zeros(4, np.int8)), ("s3", S3), ("z3", Z3), ("w3", W3), ("s4", S4),
        ("z4", Z4), ("sa", np.array(0.02, F32)), ("za", np.array(0, np.uint8)),
        ("shape", np.array([4, 3], np.int64)))]
    nodes = [
        _node("QuantizeLinear", ["w1", "s1", "z1"], "q1", axis=0),
        _node("DequantizeLinear", ["q1", "s1", "z1"], "d1", axis=0),
        _node("Add", ["x", "d1"], "y1"),
        _const("w2_flat", W2),
        _node("Identity", ["w2_flat"], "w2_id"),
        _node("Reshape", ["w2_id", "shape"], "w2"),
        _const("s2", S2),
        _const("zero_f", np.array(0.0, F32)),
        _node("Mul", ["s2", "zero_f"], "s2_0"),
        _const("c128", np.array(128.0, F32)),
        _node("Add", ["s2_0", "c128"], "z2_f"),
        _node("Cast", ["z2_f"], "z2", to=TensorProto.UINT8),  # Cast(Mul(scale, 0) + 128), as exporters write
        _node("QuantizeLinear", ["w2", "s2", "z2"], "q2"),
        _node("DequantizeLinear", ["q2", "s2", "z2"], "d2"),
        _node("Add", ["x", "d2"], "y2"),
        _node("QuantizeLinear", ["w3", "s3", "z3"], "q3", axis=-1),
        _node("DequantizeLinear", ["q3", "s3", "z3"], "d3", axis=-1),
        _node("Add", ["x", "d3"], "y3"),
        _node("QuantizeLinear", ["w4", "s4", "z4"], "q4"),
        _node("DequantizeLinear", ["q4", "s4", "z4"], "d4"),
        _node("Add", ["x", "d4"], "y4"),
        _node("QuantizeLinear", ["x", "sa", "za"], "qa"),
        _node("DequantizeLinear", ["qa", "sa", "za"], "a"),
        _node("Mul", ["x", "w1"], "shared"),
    ]
    inits.append(numpy_helper.from_array(W4, "w4"))
    outs = ["y1", "y2", "y3", "y4", "a", "shared"]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [4, 3]) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _expected(w: np.ndarray, s: np.ndarray, z: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """ONNX QuantizeLinear written out: saturate(round_half_even(w / s) + z)."""
    return np.clip(np.rint(w / s) + z.astype(np.float64), lo, hi)


WANT = {
    "q1": (_expected(W1, S1[:, None], np.zeros((4, 1)), -128, 127), np.int8),
    "q2": (_expected(W2.reshape(4, 3), S2, np.array(128), 0, 255), np.uint8),
    "q3": (_expected(W3, S3[None, :], Z3[None, :], 0, 255), np.uint8),
    "q4": (_expected(W4, S4[0], Z4[0], -128, 127), np.int8),
}


def _run(model: Any, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


def test_ties_round_to_even_and_saturate() -> None:
    # the hand-picked values say what they test: halves go to the even neighbour, the rest saturate
    assert WANT["q1"][0][:3].tolist() == [[0, 2, -2], [0, 2, -2], [0, 2, -2]]
    assert WANT["q1"][0][3].tolist() == [127, -128, 126]
    assert WANT["q2"][0].reshape(-1)[:6].tolist() == [128, 130, 126, 255, 255, 0]
    assert WANT["q3"][0][:, 2].tolist() == [255, 253, 255, 0]
    assert WANT["q4"][0][0].tolist() == [-3, -3, -1]


def test_fold_matches_numpy_and_the_reference_quantize_linear() -> None:
    model = _model()
    model.opset_import[0].version = 19  # onnx's reference Q/DQ start at 19 (the same integer arithmetic as 18's)
    reference = ReferenceEvaluator(model).run(None, {"x": np.zeros((4, 3), F32)}, intermediate=True)
    folded_model = _model()
    assert fold_weight_quantizers(folded_model) == 4
    onnx.checker.check_model(folded_model, full_check=True)
    graph = folded_model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    for k, q in enumerate(("q1", "q2", "q3", "q4"), start=1):
        source = dq[f"d{k}"].input[0]
        got = inits[source]  # the DequantizeLinear reads an integer initializer now
        want, dtype = WANT[q]
        assert got.dtype == dtype and got.shape == (4, 3), (q, got.dtype, got.shape)
        np.testing.assert_array_equal(got, want.astype(dtype), err_msg=q)
        np.testing.assert_array_equal(got, reference[q], err_msg=q)
    assert dq["d1"].input[0] == "w1_int8" and dq["d3"].input[0] == "w3_uint8"  # named after the float weight


def test_fold_removes_what_only_the_quantizers_used() -> None:
    model = _model()
    fold_weight_quantizers(model)
    graph = model.graph
    ops = [n.op_type for n in graph.node]
    # the activation quantizer stays; the constants behind the weights are gone, and so is the subgraph that
    # computed the uint8 zero point: the DequantizeLinear reads it from an initializer now (its scale, a Constant
    # node, stays as it is)
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 5
    qa = next(n for n in graph.node if n.op_type == "QuantizeLinear")
    assert list(qa.input) == ["x", "sa", "za"]
    assert not {"Identity", "Reshape", "Cast"} & set(ops), ops
    assert [n.output[0] for n in graph.node if n.op_type == "Constant"] == ["s2"]
    assert ops.count("Mul") == 1 and ops.count("Add") == 4  # x * w1, and the four x + DQ(...)
    d2 = next(n for n in graph.node if n.output[0] == "d2")
    names = {t.name: t for t in graph.initializer}
    assert list(d2.input) == ["w2_uint8", "s2", "z2_value"] and numpy_helper.to_array(names["z2_value"]) == 128
    assert {"w1", "s1", "z1", "s3", "z3", "s4", "z4"} <= set(names)  # w1: still used by x * w1; scales: by the DQs
    assert not {"w3", "w4", "shape"} & set(names)
    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    assert floats == {"w1"}


def test_fold_keeps_the_outputs() -> None:
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(F32)
    model = _model()
    before = _run(model, x)
    fold_weight_quantizers(model)
    after = _run(model, x)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_fold_without_constant_quantizers_changes_nothing() -> None:
    model = _model()
    fold_weight_quantizers(model)
    again = model.SerializeToString()
    assert fold_weight_quantizers(model) == 0 and model.SerializeToString() == again


def test_no_zero_point_means_uint8_and_an_input_initializer_is_not_a_constant() -> None:
    w = np.array([[-1.0, 0.5, 1.5, 300.0]], F32)
    graph = helper.make_graph(
        [_node("QuantizeLinear", ["w", "s"], "q"), _node("DequantizeLinear", ["q", "s"], "d"),
         _node("QuantizeLinear", ["v", "s"], "qv"), _node("DequantizeLinear", ["qv", "s"], "dv")],
        "defaults", [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 4])],  # v: an overridable default
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("dv", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1.0, F32), "s"),
         numpy_helper.from_array(w, "v")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    assert fold_weight_quantizers(model) == 1
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["w_uint8"].tolist() == [[0, 0, 2, 255]]
    assert "v" in inits and [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"] == ["v"]


@pytest.mark.parametrize("seed", range(8))
def test_quantize_linear_is_the_reference_op(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(1, 6, size=int(rng.integers(1, 5))))
    axis = int(rng.integers(-len(shape), len(shape)))
    dtype, per_axis, pow2 = [np.int8, np.uint8][seed % 2], bool(seed // 2 % 2), bool(seed // 4)
    n = shape[axis] if per_axis else 1
    size = n if per_axis else ()
    # powers of two keep the ties below exact; other scales test the float32 division itself
    scale = (2.0 ** rng.integers(-6, 2, size=size) if pow2 else rng.uniform(0.01, 2.0, size=size)).astype(F32)
    zero = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, size=n if per_axis else (), endpoint=True)
    zero = zero.astype(dtype)
    # a fifth of the elements at ties, the rest spread over (and beyond) the integer range
    ties = (rng.integers(-300, 300, size=shape) + 0.5).astype(F32)
    s = scale.reshape([-1 if d == axis % len(shape) else 1 for d in range(len(shape))]) if per_axis else scale
    x = np.where(rng.random(shape) < 0.2, ties * s, rng.normal(scale=200, size=shape) * s).astype(F32)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=axis)
    want = ReferenceEvaluator(node).run(None, {"x": x, "s": scale, "z": zero})[0]
    got = quantize_linear(x, scale, zero, axis=axis)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_quantize_linear_refuses_what_it_does_not_compute() -> None:
    x = np.ones((2, 4), F32)
    with pytest.raises(ValueError, match="blocked"):
        quantize_linear(x, np.ones((2, 2), F32), np.zeros((2, 2), np.int8), axis=1)
    with pytest.raises(ValueError, match="do not match axis"):
        quantize_linear(x, np.ones(3, F32), axis=1)
    with pytest.raises(ValueError, match="integer outputs"):
        quantize_linear(x, np.ones((), F32), output_dtype=np.int32)
    with pytest.raises(ValueError, match="float only"):
        quantize_linear(x.astype(np.int32), np.ones((), F32))
    with pytest.raises(ValueError, match="NaN"):
        quantize_linear(np.array([np.nan], F32), np.ones((), F32))
