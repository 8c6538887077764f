"""Any ``nn.Module`` as a teacher: ``wrap_module(module, stages=[...], head="fc")`` cuts its forward pass into the
named stages a split student needs (``edgesplit.interfaces.Teacher``), and ``load_weights`` reads foreign weights
(safetensors, or ``torch.load(weights_only=True)``; never pickle).

The forward pass is traced once with ``torch.fx`` (the named stages are kept as single calls), split at each stage's
call, and checked: every boundary must carry exactly one tensor (the stage's output), and the pieces run in order
must reproduce the module's output. Channels and strides of every stage come from that traced forward at
``input_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import fx, nn

from edgesplit._checks import positive_int
from edgesplit.errors import ConfigError

from ._base import Backbone

__all__ = ["WrappedTeacher", "wrap_module", "load_weights"]

STEM, HEAD = "stem", "head"


def load_weights(module: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load a state dict into ``module`` from a ``.safetensors`` file or a weights-only torch file (``.pt``,
    ``.pth``, ``.bin``: ``torch.load(weights_only=True)``, which refuses pickled code). A dict nested under
    ``state_dict`` or ``model`` and a ``module.`` prefix (DataParallel) are accepted. Returns ``module``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such weights file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors and torch.load raise many types for a bad file
        raise ConfigError(f"{p}: not a safetensors or weights-only torch file ({type(exc).__name__}: {exc}); "
                          "save weights with safetensors or torch.save(model.state_dict())") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{p}: expected a mapping of parameter names to tensors, got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        module.load_state_dict(dict(state), strict=strict)
    except RuntimeError as exc:
        raise ConfigError(f"{p}: weights do not fit {type(module).__name__}: {exc}") from exc
    return module


class _StageTracer(fx.Tracer):
    """Keeps the named stages (and torch's own layers) as single ``call_module`` nodes."""

    def __init__(self, stages: Iterable[str]) -> None:
        super().__init__()
        self.stages = frozenset(stages)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.stages or super().is_leaf_module(m, qualname)


class WrappedTeacher(Backbone):
    """A foreign network cut into ``stem``, its named stages and ``head`` (see :func:`wrap_module`).

    Each piece is a ``torch.fx.GraphModule`` sharing the original module's layers and parameters. ``stage_names``
    are ``("stem", *stages, "head")`` with the stages' submodule paths as given (a split student's ``cut`` names
    one of them); ``stage_channels`` / ``stage_strides`` cover ``stem`` (when it outputs a feature map) and every
    named stage.
    """

    def __init__(self, pieces: Sequence[tuple[str, nn.Module]], channels: dict[str, int], strides: dict[str, int],
                 num_classes: int, head: str, source: str) -> None:
        super().__init__()
        self.stage_names = tuple(name for name, _ in pieces)
        self._keys = {name: f"s{i}_{name.replace('.', '_')}" for i, (name, _) in enumerate(pieces)}
        self.pieces = nn.ModuleDict({self._keys[name]: piece for name, piece in pieces})
        self.stage_channels = channels
        self.stage_strides = strides
        self._num_classes = num_classes
        self.classifier = head
        self.source = source

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def stage(self, name: str) -> nn.Module:
        if name not in self._keys:
            raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(self.stage_names)}")
        return self.pieces[self._keys[name]]

    def replace_stage(self, name: str, module: nn.Module) -> None:
        self.stage(name)
        self.pieces[self._keys[name]] = module

    def extra_repr(self) -> str:
        return f"source={self.source}, stages={list(self.stage_names)}"


def _trace(module: nn.Module, stages: Sequence[str]) -> fx.Graph:
    try:
        return _StageTracer(stages).trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises TraceError, TypeError, NotImplementedError...
        raise ConfigError(f"{type(module).__name__} cannot be traced with torch.fx ({type(exc).__name__}: {exc}); "
                          "a teacher's forward must not branch on tensor values. Move such code inside one of the "
                          "named stages (stages are not traced into)") from exc


def _segments(graph: fx.Graph, stages: Sequence[str], cls: str) -> list[list[fx.Node]]:
    """The graph's nodes (placeholder and output excluded) split at each stage's call: the stem, one segment per
    stage ending in its call, then the head."""
    calls: dict[str, list[fx.Node]] = {s: [] for s in stages}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in calls:
            calls[node.target].append(node)
    for s, found in calls.items():
        if len(found) != 1:
            raise ConfigError(f"{cls}.forward calls stage {s!r} {len(found)} times; each stage must run exactly once")
    body = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    order = [body.index(calls[s][0]) for s in stages]
    if order != sorted(order):
        ran = [s for _, s in sorted(zip(order, stages))]
        raise ConfigError(f"{cls}.forward runs the stages in the order {ran}; list them in that order")
    bounds = [0, order[0], *(i + 1 for i in order), len(body)]  # the stem ends where the first stage is called
    return [body[bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)]


def _entries(segments: list[list[fx.Node]], image: fx.Node, names: Sequence[str], cls: str) -> list[fx.Node]:
    """The one value that enters each segment: the image, then what crosses each boundary (made before it and used
    after it), which must be the stem's single output and then each stage's own output."""
    position = {n: k for k, seg in enumerate(segments) for n in seg}
    position[image] = -1
    last = len(segments) - 1
    carried: list[set[fx.Node]] = [set() for _ in range(last)]
    for n, k in position.items():
        if n.op == "get_attr":  # parameters and buffers: each piece reads its own
            continue
        used = max((last if u.op == "output" else position[u] for u in n.users), default=k)
        for b in range(max(k, 0), used):
            carried[b].add(n)
    entries = [image]
    for b, values in enumerate(carried):
        if b == 0:
            if len(values) != 1:
                raise ConfigError(f"{cls}: {len(values)} values flow from the input into the first stage "
                                  f"{names[1]!r} ({', '.join(sorted(v.name for v in values))}); a stem must pass one "
                                  "on")
            entries.append(next(iter(values)))
            continue
        stage_out = segments[b][-1]  # boundary b > 0 follows stage b's call, the last node of its segment
        if stage_out not in values:
            raise ConfigError(f"{cls}: the output of stage {names[b]!r} is not used after it; list only stages "
                              "whose outputs the rest of the forward reads")
        if values != {stage_out}:
            extra = sorted(v.name for v in values - {stage_out})
            raise ConfigError(f"{cls} cannot be cut after stage {names[b]!r}: {', '.join(extra)} (computed before it) "
                              f"{'is' if len(extra) == 1 else 'are'} also used after it, e.g. a skip connection around "
                              "the stage; choose stages whose outputs are all that flows on")
        entries.append(stage_out)
    return entries


def _piece(root: nn.Module, nodes: list[fx.Node], entry: fx.Node, exit_: fx.Node, name: str) -> fx.GraphModule:
    """A GraphModule running ``nodes`` from ``entry``'s value to ``exit_``'s (parameters read afresh)."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {entry: g.placeholder("x")}

    def arg(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":  # a value from before the boundary: checked by the caller, not reachable here
                raise ConfigError(f"internal: {n.name} crosses into {name!r}")
            env[n] = g.node_copy(n, arg)
        return env[n]

    for n in nodes:
        if n not in env:
            env[n] = g.node_copy(n, arg)
    g.output(env[exit_] if exit_ in env else arg(exit_))
    return fx.GraphModule(root, g, class_name=f"Stage_{name.replace('.', '_')}")


def wrap_module(module: nn.Module, stages: Sequence[str], head: str = "fc", *, input_size: int = 224,
                weights: str | Path | None = None) -> WrappedTeacher:
    """``module`` as a teacher that a split student can cut after any of ``stages`` (submodule paths, in forward
    order, e.g. ``["layer1", "layer2", "layer3", "layer4"]`` for a ResNet or ``["features.3", "features.6"]``).

    ``head`` is the path of the classifier, which must run after the last stage; everything between the input and
    the first stage is the ``stem``, everything after the last stage the ``head``. ``weights``: a safetensors or
    weights-only torch file loaded into ``module`` first (:func:`load_weights`). ``input_size``: the square image
    side of the one traced forward that finds each stage's channels and stride (a multiple of the network's
    total stride).

    A ``ConfigError`` says what is wrong: a stage or head that is not a submodule, a forward that fx cannot trace,
    a stage called twice or out of order, a boundary that carries more than the stage's output (a skip connection
    around a stage), a stage whose output is not a feature map, or pieces that do not reproduce the module.
    The module's forward must not read ``self.training`` outside a submodule (the trace fixes its value).
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"wrap_module takes a torch nn.Module, got {type(module).__name__}")
    cls = type(module).__name__
    stages = list(stages) if not isinstance(stages, str) else [stages]
    if not stages or len(set(stages)) != len(stages) or not all(isinstance(s, str) and s for s in stages):
        raise ConfigError(f"{cls}: stages must be a list of distinct submodule paths, got {stages!r}")
    children = ", ".join(n for n, _ in module.named_children()) or "none"
    for path in [*stages, head]:
        try:
            module.get_submodule(path)
        except AttributeError as exc:
            raise ConfigError(f"{cls} has no submodule {path!r} (named as stage or head); its children are: "
                              f"{children}") from exc
    clash = [s for s in stages if s in (STEM, HEAD)]
    nested = [(a, b) for a in stages for b in [*stages, head] if a != b and (b.startswith(a + ".") or
                                                                           a.startswith(b + "."))]
    if clash or nested:
        raise ConfigError(f"{cls}: stages must not be named {STEM!r} or {HEAD!r} (found {clash}) nor contain one "
                          f"another or the head (found {nested})")
    positive_int(input_size, f"{cls}: input_size")
    if weights is not None:
        load_weights(module, weights)

    graph = _trace(module, stages)
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ConfigError(f"{cls}.forward takes {len(inputs)} inputs; a teacher takes one image batch")
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    if not isinstance(out, fx.Node):
        raise ConfigError(f"{cls}.forward returns {type(out).__name__}; a teacher returns one tensor of logits")
    segments = _segments(graph, stages, cls)
    names = [STEM, *stages, HEAD]
    head_nodes = segments[-1]
    if not any(n.op == "call_module" and (n.target == head or str(n.target).startswith(head + "."))
               for n in head_nodes):
        raise ConfigError(f"{cls}: the head {head!r} does not run after the last stage {stages[-1]!r}")

    entries = _entries(segments, inputs[0], names, cls)
    exits = [*entries[1:], out]
    pieces = [(names[k], _piece(module, segments[k], entries[k], exits[k], names[k])) for k in range(len(names))]

    was = module.training
    module.eval()
    try:
        channels, strides, logits = _probe(pieces, input_size, cls)
        x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = x
            for _, piece in pieces:
                y = piece(y)
            ref = module(x)
        if not torch.is_tensor(ref) or ref.shape != y.shape or not torch.allclose(y, ref, rtol=1e-4, atol=1e-5):
            raise ConfigError(f"{cls}: its stages run in order do not reproduce its forward; the forward may depend "
                              "on something the trace fixed (self.training, a Python-side value)")
    finally:
        module.train(was)
    teacher = WrappedTeacher(pieces, channels, strides, logits, head, cls)
    return teacher.train(was)


def _probe(pieces: Sequence[tuple[str, nn.Module]], size: int, cls: str) -> tuple[dict[str, int], dict[str, int], int]:
    """Channels and strides of the stem and every stage, and the number of classes, from one forward at ``size``."""
    channels: dict[str, int] = {}
    strides: dict[str, int] = {}
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        for k, (name, piece) in enumerate(pieces):
            try:
                x = piece(x)
            except Exception as exc:  # noqa: BLE001 - a shape error names the piece that failed
                raise ConfigError(f"{cls}: a {size}x{size} image fails in {name!r} ({type(exc).__name__}: {exc}); "
                                  "pass the input_size the network takes") from exc
            if name == HEAD:
                break
            is_map = torch.is_tensor(x) and x.dim() == 4 and x.shape[-1] > 0 and size % x.shape[-1] == 0 and \
                x.shape[-2] == x.shape[-1]
            if not is_map and name != STEM:
                shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                raise ConfigError(f"{cls}: stage {name!r} outputs {shape} for a {size}x{size} image; a stage must "
                                  f"output a square feature map (N, C, H, W) whose side divides {size}")
            if is_map:
                channels[name], strides[name] = int(x.shape[1]), size // int(x.shape[-1])
    if not torch.is_tensor(x) or x.dim() != 2:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ConfigError(f"{cls}: the head outputs {shape}; a teacher's head outputs logits (N, classes)")
    return channels, strides, int(x.shape[1])
