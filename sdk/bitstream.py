"""Versioned container around a codec payload: magic, version, bundle fingerprint, shape, codec id, CRC32.

Parsing is strict and bounded; every malformed input raises ``BitstreamError`` naming the check that failed.
"""

from __future__ import annotations

import math
import operator
import zlib
from dataclasses import dataclass

from .errors import BitstreamError

__all__ = [
    "MAGIC",
    "VERSION",
    "FINGERPRINT_BYTES",
    "MAX_NDIM",
    "CODEC_IDS",
    "Frame",
    "pack",
    "unpack",
]

MAGIC = b"ES"
VERSION = 1
FINGERPRINT_BYTES = 8
MAX_NDIM = 8
MAX_DIM = (1 << 31) - 1
# Byte on the wire -> codec id. Append only: a byte, once given out, keeps its meaning.
CODEC_IDS: dict[int, str] = {1: "factorized-v1", 2: "factorized-v2", 3: "factorized-v3"}
_CODEC_BYTES = {name: byte for byte, name in CODEC_IDS.items()}

_CRC_BYTES = 4
_MAX_VARINT_BYTES = 5  # enough for 2^35 - 1, above any dim or payload length we accept
# magic, version, fingerprint, codec, ndim, one 1-byte dim, 1-byte payload length, CRC
_MIN_FRAME = len(MAGIC) + 1 + FINGERPRINT_BYTES + 1 + 1 + 1 + 1 + _CRC_BYTES
_HEADER_START = len(MAGIC) + 1 + FINGERPRINT_BYTES  # where the codec byte sits


@dataclass(frozen=True)
class Frame:
    """One unpacked frame: the codec payload and what is needed to decode it."""

    payload: bytes
    shape: tuple[int, ...]
    codec: str
    fingerprint: bytes


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


def pack(payload: bytes, *, fingerprint: bytes, shape: tuple[int, ...], codec: str) -> bytes:
    """Wrap a codec payload in a frame that ``unpack`` can check and parse."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"payload must be bytes, got {type(payload).__name__}")
    if not isinstance(fingerprint, (bytes, bytearray)) or len(fingerprint) != FINGERPRINT_BYTES:
        raise BitstreamError(
            f"fingerprint must be {FINGERPRINT_BYTES} bytes (the bundle fingerprint), got {fingerprint!r}"
        )
    if not isinstance(codec, str) or codec not in _CODEC_BYTES:
        raise BitstreamError(f"unknown codec {codec!r}; known codecs: {', '.join(sorted(_CODEC_BYTES))}")
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
    body = bytes(payload)
    header = b"".join(
        [
            MAGIC,
            bytes([VERSION]),
            bytes(fingerprint),
            bytes([_CODEC_BYTES[codec], len(dims)]),
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

    # Framing: find where the payload starts and ends, so truncation and trailing bytes are named as such.
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
    length, pos = _read_varint(data, pos, end, "payload length")
    if pos + length > end:
        raise BitstreamError(
            f"frame is truncated: it declares a {length}-byte payload, {max(end - pos, 0)} bytes are there"
        )
    if pos + length < end:
        raise BitstreamError(f"frame has {end - pos - length} trailing bytes after the payload and CRC")

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
    return Frame(payload=data[pos:end], shape=shape, codec=codec, fingerprint=fingerprint)
