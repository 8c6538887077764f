"""The contracts between edgesplit's parts, as ``typing.Protocol``s (torch-free: tensors are typed ``Any``).

The exporter, the evaluators and the runtime are written against these names only, so a third-party plugin whose
components satisfy them trains, exports and serves with no first-party change. Each protocol is
``runtime_checkable``: ``isinstance(obj, SplitModel)`` checks that the members exist (not their signatures; the
conformance tests in ``tests/test_interfaces.py`` check behaviour for every registered component).

- ``SplitModel``: a student cut in two, device half image -> int32 symbols, server half symbols -> outputs.
- ``FullModel``: one graph, image -> outputs; ``Exportable``: a model that gives the exporter another module.
- ``EntropyCodec``: lossless coding of int32 symbols with tables that travel in a bundle (kind ``codec``).
- ``Bottleneck``: the torch module that rounds a latent to symbols and owns the codec's tables (kind
  ``bottleneck``).
- ``Teacher``: a network of named stages that a split student can cut (kind ``backbone``; any ``nn.Module`` becomes
  one with ``edgesplit.plugins.backbones.wrap_module``).
- ``BackendSession`` / ``BackendFactory``: one graph opened by one runtime on one device (kind ``backend``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

__all__ = ["EntropyCodec", "SplitModel", "FullModel", "Exportable", "Bottleneck", "Teacher", "BackendSession",
           "BackendFactory"]


@runtime_checkable
class EntropyCodec(Protocol):
    """Codes an int32 array of shape (C, ...) with fixed tables, one per channel; registered as kind ``codec``
    under its ``codec_id``.

    Contract: ``decode(encode(s), s.shape)`` equals ``s`` for every int32 ``s`` of ``num_channels`` channels
    (values outside a table's support included); ``len(encode(s))`` stays within 1% of ``information_bits(s) / 8``
    plus a small constant; the bytes depend only on the tables and ``s`` (identical in every process).
    ``to_arrays()`` returns plain numeric arrays (``np.savez``-able without pickle) from which ``from_arrays``
    rebuilds a codec that produces the same bytes; ``codec_id`` names the layout of the coded body, and a bitstream frame
    carries it.
    """

    @property
    def codec_id(self) -> str: ...

    @property
    def num_channels(self) -> int: ...

    def encode(self, symbols: Any) -> bytes: ...

    def decode(self, body: bytes, shape: tuple[int, ...]) -> Any: ...

    def information_bits(self, symbols: Any) -> float: ...

    def to_arrays(self) -> dict[str, Any]: ...

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], *, codec_id: str = ...) -> EntropyCodec: ...


@runtime_checkable
class SplitModel(Protocol):
    """A split student (torch): the device half, the server half and what travels between them.

    Contract: ``encode_symbols(x)`` maps a normalized float image batch (N, 3, H, W) to integer symbols
    (N, C, h, w) with ``(C, h, w) == latent_shape(H, W)``; the rounding is inside, so the exported device graph
    ends in int32. ``decode_symbols(symbols)`` maps those symbols to outputs (logits, N x classes), dequantizing
    inside, so what the server computes depends only on the payload. ``codec()`` returns the ``EntropyCodec``
    whose tables code the symbols (``num_channels == C``). ``forward(x)`` equals
    ``decode_symbols(encode_symbols(x))`` in eval mode.
    """

    def encode_symbols(self, x: Any) -> Any: ...

    def decode_symbols(self, symbols: Any) -> Any: ...

    def codec(self) -> EntropyCodec: ...

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]: ...


@runtime_checkable
class FullModel(Protocol):
    """A model run as one graph (torch): ``model(x)`` maps a normalized float image batch (N, 3, H, W) to outputs
    (logits, N x classes); ``eval()`` puts it in inference mode and returns it. Every ``nn.Module`` classifier is
    one; a ``SplitModel`` is exported in two halves instead."""

    def __call__(self, x: Any) -> Any: ...

    def eval(self) -> Any: ...


@runtime_checkable
class Exportable(Protocol):
    """A ``FullModel`` that gives the exporter a different module to trace: ``export_module()`` returns a module
    computing the same outputs for export (e.g. a QAT student whose quantizers become ONNX Q/DQ pairs); the model
    itself is not modified."""

    def export_module(self) -> Any: ...


@runtime_checkable
class Bottleneck(Protocol):
    """A learned entropy bottleneck over C channels (torch module; kind ``bottleneck``).

    Contract: ``quantize_symbols(y)`` rounds a latent to int32 symbols exactly as the device graph does;
    ``dequantize(symbols)`` is its inverse up to the rounding; ``codec()`` returns the ``EntropyCodec`` whose
    tables are the learned prior (in eval mode, deterministic); ``aux_loss()`` is the term that fits the prior's quantiles.
    Calling the module returns ``(y_hat, likelihoods)`` for training.
    """

    channels: int

    def quantize_symbols(self, y: Any) -> Any: ...

    def dequantize(self, symbols: Any) -> Any: ...

    def codec(self) -> EntropyCodec: ...

    def aux_loss(self) -> Any: ...


@runtime_checkable
class Teacher(Protocol):
    """A network of named stages that a split student can cut after any stage (torch module; kind ``backbone``).

    Contract: ``stage_names`` lists the stages in order, ending in the classifier ``head``; running them in order
    is the forward pass, and each takes only the previous stage's output. ``stage_channels`` / ``stage_strides``
    give, for every stage but the head, its output channels and its stride relative to the input image.
    ``forward_stages(x, after=a, until=u, keep=k)`` runs the stages strictly after ``a`` up to ``u`` (None: the
    ends) and returns the output and the outputs of the stages named in ``k``. ``stage(name)`` is the stage's
    module; ``replace_stage(name, module)`` swaps it (a split student replaces the stages it cuts off with
    ``nn.Identity``). ``num_classes`` is the head's output size.
    """

    stage_names: tuple[str, ...]
    stage_channels: Mapping[str, int]
    stage_strides: Mapping[str, int]

    @property
    def num_classes(self) -> int | None: ...

    def stage(self, name: str) -> Any: ...

    def replace_stage(self, name: str, module: Any) -> None: ...

    def stages_between(self, after: str | None, until: str | None) -> list[str]: ...

    def forward_stages(self, x: Any, *, after: str | None = None, until: str | None = None,
                       keep: Iterable[str] = ()) -> tuple[Any, dict[str, Any]]: ...


@runtime_checkable
class BackendSession(Protocol):
    """One graph opened by one runtime on one device (torch-free; what a kind ``backend`` factory returns).

    Contract: ``run({name: ndarray})`` takes every input by name (``input_names``; dtypes and fixed dims as in
    ``input_shapes``, None for a dynamic dim) and returns every output by name as arrays the caller owns; a wrong
    input or a failure while running is an ``InferenceError`` (``BackendUnavailable`` is for opening: a runtime not
    installed, a device missing); ``output_shapes`` describes the outputs.
    ``backend``, ``device`` and ``threads`` are what the runtime reports it uses (never a silent fallback);
    ``info()`` returns them with backend details. ``max_batch`` is the most rows one ``run`` takes (None: no
    limit). ``close()`` releases the runtime.
    """

    backend: str
    device: str
    threads: int | None
    max_batch: int | None

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    @property
    def input_shapes(self) -> dict[str, tuple[int | None, ...]]: ...

    @property
    def output_shapes(self) -> dict[str, tuple[int | None, ...]]: ...

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@runtime_checkable
class BackendFactory(Protocol):
    """How a backend opens a graph (the registered kind ``backend`` callable): ``open(path, device=..., threads=...,
    weights=..., options=...) -> BackendSession``; a missing runtime or device raises ``BackendUnavailable`` naming
    the extra to install, an unreadable file ``BundleError``."""

    def __call__(self, path: Any, *, device: str = ..., threads: int | None = ..., weights: Any = ...,
                 options: Mapping[str, Any] | None = ...) -> BackendSession: ...
