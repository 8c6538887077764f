"""Weight quantizers folded at export: a QuantizeLinear whose input is a constant (a QAT student's float weight and
learned scale) is computed once, so the graph stores the integer weight followed by DequantizeLinear, as
quantization tools write it, instead of the float weight quantized again on every run.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["fold_weight_quantizers", "quantize_linear"]

log = logging.getLogger(__name__)

_STANDARD = ("", "ai.onnx")
_RANDOM = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli"})


def quantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, *, axis: int = 1,
                    output_dtype: Any = np.uint8) -> np.ndarray:
    """ONNX QuantizeLinear (opsets 10-25, per tensor or per axis, integer outputs): ``saturate(rint(x / scale) +
    zero_point)``, the division in ``x``'s float type, ties to even. The output type is the zero point's, else
    ``output_dtype``. Raises ``ValueError`` for what this does not compute (blocked scales, non-float ``x``, NaN)."""
    dtype = np.dtype(zero_point.dtype if zero_point is not None else output_dtype)
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        raise ValueError(f"QuantizeLinear to {dtype} is not folded (integer outputs of 8 or 16 bits only)")
    if x.dtype.kind != "f" or scale.dtype.kind != "f":
        raise ValueError(f"QuantizeLinear of {x.dtype} by a {scale.dtype} scale is not folded (float only)")
    ratio = x / _along(scale, x.shape, axis)
    if np.isnan(ratio).any():
        raise ValueError("QuantizeLinear of NaN (or 0 / 0) is not folded")
    q = np.rint(ratio).astype(np.float64)  # exact: float16/32 integers are float64 integers; inf saturates below
    if zero_point is not None:
        q += _along(zero_point, x.shape, axis).astype(np.float64)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


def _along(t: np.ndarray, shape: Sequence[int], axis: int) -> np.ndarray:
    """A scale or zero point broadcastable to ``shape``: one element per tensor, or one per index of ``axis``."""
    if t.size == 1 and t.ndim <= 1:
        return t.reshape(())
    if t.ndim != 1:
        raise ValueError(f"a {t.ndim}-d scale or zero point (blocked quantization) is not folded")
    ax = axis + len(shape) if axis < 0 else axis
    if not 0 <= ax < len(shape) or shape[ax] != t.shape[0]:
        raise ValueError(f"{t.shape[0]} scales or zero points do not match axis {axis} of a {tuple(shape)} tensor")
    dims = [1] * len(shape)
    dims[ax] = -1
    return t.reshape(dims)


def _subgraphs(node: Any) -> Iterator[Any]:
    import onnx

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _all_nodes(graph: Any) -> Iterator[Any]:
    """Every node of ``graph``, those of its subgraphs (If, Loop, Scan bodies) included."""
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _all_nodes(sub)


class _Constants:
    """The tensors of a graph that are constants (initializers that are not inputs, Constant nodes, and
    deterministic standard ops of constants), their values computed on demand with onnx's reference evaluator."""

    def __init__(self, model: Any) -> None:
        graph = model.graph
        inputs = {v.name for v in graph.input}
        self._opsets = list(model.opset_import)
        self._producer: dict[str, Any] = {}
        self._tensors = {t.name: t for t in graph.initializer if t.name not in inputs}
        self._values: dict[str, np.ndarray | None] = {}
        self.names = set(self._tensors)
        for node in graph.node:  # graphs are topologically sorted
            if (node.domain in _STANDARD and node.op_type not in _RANDOM and not any(_subgraphs(node))
                    and all(not i or i in self.names for i in node.input)):
                for o in node.output:
                    if o:
                        self.names.add(o)
                        self._producer[o] = node

    def value(self, name: str) -> np.ndarray | None:
        """The value of ``name``, or None when it is not a constant (or cannot be evaluated here)."""
        if name not in self.names:
            return None
        if name not in self._values:
            if name in self._tensors:
                from onnx import numpy_helper

                self._values[name] = numpy_helper.to_array(self._tensors[name])
            else:
                self._evaluate(self._producer[name])
        return self._values.get(name)

    def producer(self, name: str) -> Any | None:
        return self._producer.get(name)

    def _evaluate(self, node: Any) -> None:
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        outs = [o for o in node.output if o]
        feeds = {i: self.value(i) for i in dict.fromkeys(node.input) if i}
        if any(v is None for v in feeds.values()):
            self._values.update(dict.fromkeys(outs))
            return
        graph = helper.make_graph([node], "constant", [helper.make_empty_tensor_value_info(i) for i in feeds],
                                  [helper.make_empty_tensor_value_info(o) for o in outs])
        try:
            got = ReferenceEvaluator(helper.make_model(graph, opset_imports=self._opsets)).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - the reference evaluator raises many types: treat as not constant
            log.debug("constant %s (%s) not evaluated: %s", node.name, node.op_type, exc)
            got = [None] * len(outs)
        for o, v in zip(outs, got):
            self._values[o] = v if isinstance(v, np.ndarray) else None


def fold_weight_quantizers(model: Any) -> int:
    """Fold every QuantizeLinear of ``model``'s main graph whose input, scale and zero point are constants into an
    integer initializer (the Q's result, computed as ONNX defines it: ``quantize_linear``), which its consumers
    (the DequantizeLinear) then read. Constants are initializers (not graph inputs), Constant nodes, and what
    deterministic standard ops compute from constants (Identity, Reshape, Cast(Mul(scale, 0)), ...; evaluated with
    onnx's reference evaluator). A scale or zero point that such a subgraph computes for the DequantizeLinear of a
    folded weight becomes an initializer too. The QuantizeLinear, and the initializers and constant nodes that
    nothing uses any more, are removed. Activation quantizers (non-constant inputs) stay. Modifies ``model`` in
    place; returns the number of quantizers folded."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = _Constants(model)
    outputs = {v.name for v in graph.output}
    uses: Counter[str] = Counter(i for n in _all_nodes(graph) for i in n.input if i)
    taken = {o for n in _all_nodes(graph) for o in n.output} | {t.name for t in graph.initializer} | {
        v.name for v in graph.input}
    renamed: dict[str, str] = {}
    folded: dict[tuple[Any, ...], str] = {}  # the same Q of the same constants: one initializer
    dropped: list[Any] = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.domain not in _STANDARD or node.output[0] in outputs:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        names = list(node.input) + [""] * (3 - len(node.input))
        values = [consts.value(n) if n else None for n in names]
        if values[0] is None or values[1] is None or (names[2] and values[2] is None):
            continue
        key = (*names, attrs.get("axis", 1), attrs.get("output_dtype", 0), attrs.get("block_size", 0))
        if key not in folded:
            if attrs.get("block_size", 0):
                continue
            out_type = helper.tensor_dtype_to_np_dtype(attrs.get("output_dtype") or 2)  # default: uint8
            try:
                q = quantize_linear(values[0], values[1], values[2], axis=attrs.get("axis", 1),
                                    output_dtype=out_type)
            except ValueError as exc:
                log.debug("QuantizeLinear %s not folded: %s", node.name, exc)
                continue
            name = _unique(f"{names[0]}_{q.dtype.name}", taken)
            graph.initializer.append(numpy_helper.from_array(q, name))
            folded[key] = name
        renamed[node.output[0]] = folded[key]
        dropped.append(node)
        uses.subtract(n for n in node.input if n)
    if not dropped:
        return 0
    candidates = [n for node in dropped for n in node.input if n]
    # the folded weights' DequantizeLinear read their scales and zero points from initializers too, not from
    # subgraphs that compute them (TensorRT's parser and onnxruntime's Q/DQ fusions look for constants there)
    computed: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in _STANDARD or node.input[0] not in renamed:
            continue
        for k, name in enumerate(node.input[1:3], start=1):
            producer = consts.producer(name)
            if producer is None or producer.op_type == "Constant" or (value := consts.value(name)) is None:
                continue
            if name not in computed:
                computed[name] = _unique(f"{name}_value", taken)
                graph.initializer.append(numpy_helper.from_array(value, computed[name]))
            node.input[k] = computed[name]
            uses[name] -= 1
            candidates.append(name)
    gone = set(renamed)
    _unused(graph, consts, candidates, uses, outputs, gone)
    _delete(graph.node, lambda n: bool(gone.intersection(n.output)))
    _delete(graph.initializer, lambda t: t.name in gone)
    _delete(graph.value_info, lambda v: v.name in gone)
    for node in _all_nodes(graph):
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    return len(dropped)


def _delete(items: Any, doomed: Callable[[Any], bool]) -> None:
    """Delete from a repeated protobuf field in place, by index (``remove`` compares whole messages)."""
    for k in reversed([k for k, item in enumerate(items) if doomed(item)]):
        del items[k]


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def _unused(graph: Any, consts: _Constants, candidates: list[str], uses: Counter[str], outputs: set[str],
            gone: set[str]) -> None:
    """Add to ``gone`` the initializers among ``candidates`` that nothing uses any more and the outputs of the
    constant nodes among their producers that nothing uses any more, then look at those nodes' inputs in turn."""
    inits = {t.name for t in graph.initializer} - {v.name for v in graph.input}
    todo = list(dict.fromkeys(candidates))
    while todo:
        name = todo.pop()
        if uses[name] > 0 or name in outputs or name in gone:
            continue
        if name in inits:
            gone.add(name)
            continue
        node = consts.producer(name)
        if node is None or any(uses[o] > 0 or o in outputs for o in node.output if o):
            continue
        gone.update(o for o in node.output if o)
        for i in node.input:
            if i:
                uses[i] -= 1
                todo.append(i)
