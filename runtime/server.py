"""The server half of a split bundle: payload bytes -> checked frame -> symbols -> decoder graph -> ``Prediction``.

Every payload is checked (framing, CRC, fingerprint, exact latent shape) and entropy-decoded before any graph runs,
so a bad payload costs no graph time and cannot make the decoder allocate more than the bundle's latent.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgesplit import bitstream
from edgesplit.bitstream import Frame
from edgesplit.bundle import Bundle
from edgesplit.errors import BitstreamError, BundleError, ForeignPayloadError
from edgesplit.interfaces import BackendSession

from .backends import open_part
from .device import (DEFAULT_TOP_K, Prediction, _check_top_k, _ms, _require_kind, _SessionInfo, as_bundle,
                     predictions_from_logits)

__all__ = ["ForeignPayloadError", "ServerDecoder"]

# Only used to tell a foreign payload from a malformed one after the strict parse failed; parsing never allocates
# per element, and nothing is decoded from a frame whose shape differs from this bundle's latent.
_IDENTIFY_MAX_ELEMENTS = 1 << 26


class ServerDecoder(_SessionInfo):
    """Decodes payloads made by ``DeviceEncoder`` of the same bundle into predictions.

    ``decode_batch`` runs the decoder graph once for all payloads. ``last_timings``: unpack, entropy, graph,
    postprocess and total milliseconds of the last call.
    """

    def __init__(self, bundle: Bundle, session: BackendSession, top_k: int = DEFAULT_TOP_K) -> None:
        _require_kind(bundle, "split", type(self).__name__)
        self.bundle = bundle
        self.session = session
        self.top_k = _check_top_k(top_k)
        self.latent_shape = bundle.latent_shape
        self.max_elements = math.prod(self.latent_shape)
        self.codec = bundle.codec()
        self.codec_id = self.codec.codec_id  # the layout the manifest's codec.id names
        self._fingerprint = bundle.fingerprint
        self._labels = bundle.labels
        self.last_timings: dict[str, float] = {}
        if "symbols" not in session.input_names or "logits" not in session.output_names:
            raise BundleError(f"{bundle.path}: the decoder graph has inputs {session.input_names} and outputs "
                              f"{session.output_names}; expected 'symbols' -> 'logits'")
        if session.input_shapes["symbols"] != (None, *self.latent_shape):
            raise BundleError(f"{bundle.path}: the decoder graph takes symbols of shape "
                              f"{session.input_shapes['symbols']}; the manifest's latent is {self.latent_shape} "
                              "(with a dynamic batch); re-export the bundle")
        if self.codec.num_channels != self.latent_shape[0]:
            raise BundleError(f"{bundle.path}: codec {self.codec_id!r} with {self.codec.num_channels} channels does "
                              f"not fit the latent {self.latent_shape}")
        classes = self._output_classes()
        if classes != len(self._labels):
            raise BundleError(f"{bundle.path}: the decoder graph outputs {classes} logits per payload; the manifest "
                              f"has {len(self._labels)} labels (re-export the bundle)")

    def _output_classes(self) -> int:
        """Logits per payload: from the graph's declared output shape, else from one call on zero symbols."""
        shape = self.session.output_shapes.get("logits")
        if shape is not None and len(shape) == 2 and isinstance(shape[1], int):
            return shape[1]
        logits = self.session.run({"symbols": np.zeros((1, *self.latent_shape), np.int32)})["logits"]
        return int(logits.shape[1]) if logits.ndim == 2 else -1

    @classmethod
    def open(cls, bundle: Bundle | str | Path, backend: str = "onnxruntime", device: str = "cpu",
             threads: int | None = None, *, top_k: int = DEFAULT_TOP_K,
             options: Mapping[str, Any] | None = None) -> "ServerDecoder":
        """Open the decoder of a split bundle with ``backend`` on ``device`` (see ``open_session``)."""
        opened = as_bundle(bundle)
        _require_kind(opened, "split", cls.__name__)
        session = open_part(opened, "decoder", backend, device=device, threads=threads, options=options)
        return cls(opened, session, top_k=top_k)

    # -- description ------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    def __repr__(self) -> str:
        return (f"ServerDecoder(bundle={str(self.bundle.path)!r}, backend={self.backend!r}, device={self.device!r}, "
                f"threads={self.threads}, fingerprint={self._fingerprint.hex()})")

    # -- checking ---------------------------------------------------------------------------------------
    def unpack(self, payload: bytes) -> Frame:
        """Check a payload and return its frame; ``ForeignPayloadError`` if made by another bundle, else
        ``BitstreamError`` for anything malformed, truncated, oversized or of another latent shape."""
        try:
            frame = bitstream.unpack(payload, max_elements=self.max_elements)
        except BitstreamError as exc:
            foreign = self._foreign(payload)
            if foreign is not None:
                raise foreign from exc
            raise
        if frame.fingerprint != self._fingerprint:
            raise self._foreign_error(frame.fingerprint)
        if frame.codec != self.codec_id:
            raise BitstreamError(f"payload uses codec {frame.codec!r}; this bundle decodes {self.codec_id!r}")
        if frame.shape != self.latent_shape:
            raise BitstreamError(f"payload latent shape {frame.shape} is not this bundle's {self.latent_shape}")
        return frame

    def _foreign_error(self, fingerprint: bytes) -> ForeignPayloadError:
        return ForeignPayloadError(
            f"payload fingerprint {fingerprint.hex()} does not match this bundle ({self._fingerprint.hex()}, "
            f"{self.bundle.manifest.get('name', self.bundle.path.name)}); it was made by another model or bundle "
            "version: encode with the bundle this server runs")

    def _foreign(self, payload: Any) -> ForeignPayloadError | None:
        """A frame that failed the strict parse only for its size (another bundle's latent) is foreign."""
        try:
            frame = bitstream.unpack(payload, max_elements=_IDENTIFY_MAX_ELEMENTS)
        except BitstreamError:
            return None
        return self._foreign_error(frame.fingerprint) if frame.fingerprint != self._fingerprint else None

    def symbols(self, payload: bytes | Frame) -> np.ndarray:
        """int32 symbols (C, H, W) of one payload (or of a frame from ``unpack``)."""
        frame = payload if isinstance(payload, Frame) else self.unpack(payload)
        if frame.fingerprint != self._fingerprint or frame.shape != self.latent_shape:
            raise BitstreamError("frame was not checked by this decoder's unpack(); pass the payload bytes")
        return self.codec.decode(frame.body, self.latent_shape)

    # -- decoding ---------------------------------------------------------------------------------------
    def decode(self, payload: bytes) -> Prediction:
        """One payload -> its prediction."""
        return self.decode_batch([payload])[0]

    def decode_batch(self, payloads: Sequence[bytes]) -> list[Prediction]:
        """Payloads -> predictions, in order, with one decoder-graph call. Every payload is checked and decoded
        first; the first bad one raises (its index in the message) and the graph does not run."""
        if isinstance(payloads, (bytes, bytearray, memoryview)):
            raise BitstreamError("decode_batch takes a sequence of payloads; use decode() for one payload")
        if not payloads:
            return []
        t_start = time.perf_counter()
        frames = [self._indexed(i, len(payloads), self.unpack, p) for i, p in enumerate(payloads)]
        unpack_ms = _ms(t_start)
        t0 = time.perf_counter()
        symbols = np.stack([self._indexed(i, len(frames), self.symbols, f) for i, f in enumerate(frames)])
        entropy_ms = _ms(t0)
        predictions = self.predict_symbols(symbols)
        self.last_timings = {"unpack_ms": unpack_ms, "entropy_ms": entropy_ms, **self.last_timings,
                             "total_ms": _ms(t_start)}
        return predictions

    @staticmethod
    def _indexed(i: int, n: int, fn: Any, arg: Any) -> Any:
        try:
            return fn(arg)
        except BitstreamError as exc:
            if n == 1:
                raise
            raise type(exc)(f"payload {i} of {n}: {exc}") from exc

    def predict_symbols(self, symbols: np.ndarray) -> list[Prediction]:
        """int32 symbols (N, C, H, W) -> predictions, with one decoder-graph call (no payload checks; several only
        where the backend caps the batch, as a TensorRT profile does)."""
        t0 = time.perf_counter()
        symbols = np.asarray(symbols)
        step = self.session.max_batch or len(symbols) or 1
        chunks = [self.session.run({"symbols": symbols[i:i + step]})["logits"]
                  for i in range(0, max(len(symbols), 1), step)]
        logits = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        graph_ms = _ms(t0)
        if logits.ndim != 2 or logits.shape != (len(symbols), len(self._labels)):
            raise BundleError(f"{self.bundle.path}: the decoder returned logits of shape {logits.shape} for "
                              f"{len(symbols)} payloads; the manifest has {len(self._labels)} labels")
        t0 = time.perf_counter()
        predictions = predictions_from_logits(logits, self._labels, self.top_k, self.bundle.label_names)
        self.last_timings = {"graph_ms": graph_ms, "postprocess_ms": _ms(t0), "batch": len(symbols)}
        return predictions

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "ServerDecoder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
