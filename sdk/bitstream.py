"""Versioned container around a coded body: magic, version, bundle fingerprint, shape, codec id, CRC32.

Parsing is strict and bounded; every malformed input raises ``BitstreamError`` naming the check that failed. A payload
is the whole frame on the wire; its body is the codec's bytes inside it.
"""

from __future__ import annotations

import math
import operator
import warnings
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._codec_ids import CODEC_BYTES
from .errors import BitstreamError

if TYPE_CHECKING:
    from .interfaces import EntropyCodec

__all__ = [
    "MAGIC",
    "VERSION",
    "FINGERPRINT_BYTES",
    "MAX_NDIM",
    "CODEC_IDS",
    "Frame",
    "pack",
    "unpack",
    "encode_payload",
    "decode_payload",
]

MAGIC = b"ES"
VERSION = 1
FINGERPRINT_BYTES = 8
MAX_NDIM = 8
MAX_DIM = (1 << 31) - 1
# Byte on the wire -> codec id, read from the one table (edgesplit._codec_ids).
CODEC_IDS: dict[int, str] = {byte: name for name, byte in CODEC_BYTES.items()}

_CRC_BYTES = 4
_MAX_VARINT_BYTES = 5  # enough for 2^35 - 1, above any dim or body length we accept
# magic, version, fingerprint, codec, ndim, one 1-byte dim, 1-byte body length, CRC
_MIN_FRAME = len(MAGIC) + 1 + FINGERPRINT_BYTES + 1 + 1 + 1 + 1 + _CRC_BYTES
_HEADER_START = len(MAGIC) + 1 + FINGERPRINT_BYTES  # where the codec byte sits


@dataclass(frozen=True)
class Frame:
    """One unpacked frame: the coded body and what is needed to decode it."""

    body: bytes
    shape: tuple[int, ...]
    codec: str
    fingerprint: bytes

    @property
    def payload(self) -> bytes:
        """Deprecated name of ``body`` (a payload is the whole frame on the wire)."""
        warnings.warn("Frame.payload is deprecated: use Frame.body (the coded bytes inside the frame)",
                      DeprecationWarning, stacklevel=2)
        return self.body


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """LEB128 varint at ``pos`` (before ``end``); must be minimal and at most 5 bytes."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= end:
            raise BitstreamError(f"frame is truncated inside the {what} field")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise BitstreamError(f"frame's {what} field is not a minimal varint; the frame is corrupted")
            return value, pos + i + 1
    raise BitstreamError(f"frame's {what} field is longer than {_MAX_VARINT_BYTES} bytes; the frame is corrupted")


def pack(body: bytes, *, fingerprint: bytes, shape: tuple[int, ...], codec: str) -> bytes:
    """Wrap a coded body in a frame (the payload) that ``unpack`` can check and parse."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"frame body must be bytes, got {type(body).__name__}")
    if not isinstance(fingerprint, (bytes, bytearray)) or len(fingerprint) != FINGERPRINT_BYTES:
        raise BitstreamError(
            f"fingerprint must be {FINGERPRINT_BYTES} bytes (the bundle fingerprint), got {fingerprint!r}"
        )
    if not isinstance(codec, str) or codec not in CODEC_BYTES:
        raise BitstreamError(f"unknown codec {codec!r}; known codecs: {', '.join(sorted(CODEC_BYTES))}")
    try:
        raw = tuple(shape)
        if any(isinstance(dim, bool) for dim in raw):
            raise TypeError("bool is not a dim")
        dims = tuple(operator.index(dim) for dim in raw)
    except TypeError as exc:
        raise BitstreamError(f"shape dims must be ints in [1, {MAX_DIM}], got {shape!r}") from exc
    if not 1 <= len(dims) <= MAX_NDIM:
        raise BitstreamError(f"shape must have 1 to {MAX_NDIM} dims, got {dims}")
    if any(not 1 <= dim <= MAX_DIM for dim in dims):
        raise BitstreamError(f"shape dims must be ints in [1, {MAX_DIM}], got {dims}")
    body = bytes(body)
    header = b"".join(
        [
            MAGIC,
            bytes([VERSION]),
            bytes(fingerprint),
            bytes([CODEC_BYTES[codec], len(dims)]),
            *(_varint(dim) for dim in dims),
            _varint(len(body)),
        ]
    )
    frame = header + body
    return frame + zlib.crc32(frame).to_bytes(_CRC_BYTES, "little")


def unpack(
    data: bytes, *, expected_fingerprint: bytes | None = None, max_elements: int = 1 << 24
) -> Frame:
    """Check and parse a frame. Order: size, magic, version, framing, CRC32, codec, shape, fingerprint."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"frame must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _MIN_FRAME:
        raise BitstreamError(f"frame is truncated: {len(data)} bytes, a frame has at least {_MIN_FRAME}")
    if data[: len(MAGIC)] != MAGIC:
        raise BitstreamError(f"wrong magic {data[:2]!r} (expected {MAGIC!r}); this is not an edgesplit payload")
    if data[len(MAGIC)] != VERSION:
        raise BitstreamError(
            f"unsupported frame version {data[len(MAGIC)]} (this decoder reads version {VERSION}); "
            "use a matching edgesplit release"
        )

    # Framing: find where the body starts and ends, so truncation and trailing bytes are named as such.
    end = len(data) - _CRC_BYTES
    pos = _HEADER_START
    codec_byte, ndim = data[pos], data[pos + 1]
    pos += 2
    if not 1 <= ndim <= MAX_NDIM:
        raise BitstreamError(f"frame declares {ndim} dims (allowed 1 to {MAX_NDIM}); the frame is corrupted")
    dims = []
    for axis in range(ndim):
        dim, pos = _read_varint(data, pos, end, f"shape[{axis}]")
        dims.append(dim)
    length, pos = _read_varint(data, pos, end, "body length")
    if pos + length > end:
        raise BitstreamError(
            f"frame is truncated: it declares a {length}-byte body, {max(end - pos, 0)} bytes are there"
        )
    if pos + length < end:
        raise BitstreamError(f"frame has {end - pos - length} trailing bytes after the body and CRC")

    crc = int.from_bytes(data[end:], "little")
    if zlib.crc32(data[:end]) != crc:
        raise BitstreamError("frame CRC32 mismatch: the frame was corrupted in transit or storage")

    codec = CODEC_IDS.get(codec_byte)
    if codec is None:
        raise BitstreamError(f"frame names unknown codec byte {codec_byte}; a newer edgesplit may read it")
    shape = tuple(dims)
    if any(not 1 <= dim <= MAX_DIM for dim in shape):
        raise BitstreamError(f"frame shape {shape} has a dim outside [1, {MAX_DIM}]")
    elements = math.prod(shape)
    if elements > max_elements:
        raise BitstreamError(
            f"frame shape {shape} has {elements} elements, over max_elements={max_elements}; "
            "raise max_elements if such latents are expected"
        )
    fingerprint = data[len(MAGIC) + 1 : _HEADER_START]
    if expected_fingerprint is not None and fingerprint != bytes(expected_fingerprint):
        raise BitstreamError(
            f"frame fingerprint {fingerprint.hex()} does not match this bundle ({bytes(expected_fingerprint).hex()}); "
            "the payload was made by another model or bundle version"
        )
    return Frame(body=data[pos:end], shape=shape, codec=codec, fingerprint=fingerprint)


def encode_payload(codec: EntropyCodec, symbols: Any, *, fingerprint: bytes) -> bytes:
    """int32 symbols (C, ...) -> one payload: ``codec.encode`` framed with their shape and the codec's id."""
    return pack(codec.encode(symbols), fingerprint=fingerprint, shape=np.shape(symbols), codec=codec.codec_id)


def decode_payload(codec: EntropyCodec, payload: bytes, *, fingerprint: bytes | None,
                   shape: tuple[int, ...] | None = None, max_elements: int = 1 << 24) -> Any:
    """One payload -> its int32 symbols: strict ``unpack``, then the frame must name ``codec``'s id (and ``shape``,
    when given) before anything is entropy-decoded. ``fingerprint=None`` accepts a frame from any bundle."""
    frame = unpack(payload, expected_fingerprint=fingerprint, max_elements=max_elements)
    if frame.codec != codec.codec_id:
        raise BitstreamError(f"payload uses codec {frame.codec!r}; this codec decodes {codec.codec_id!r}")
    if shape is not None and frame.shape != tuple(shape):
        raise BitstreamError(f"payload carries a latent of shape {frame.shape}; this model's latent is "
                             f"{tuple(shape)}: encode with the same model or bundle")
    return codec.decode(frame.body, frame.shape)
