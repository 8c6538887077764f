"""Tests for edgesplit.bitstream: round trips, header size, and strict rejection of every malformed frame."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesplit.bitstream import (
    FINGERPRINT_BYTES,
    MAGIC,
    MAX_NDIM,
    VERSION,
    Frame,
    decode_payload,
    encode_payload,
    pack,
    unpack,
)
from edgesplit.errors import BitstreamError

GOLDEN = Path(__file__).parent / "golden"
FP = bytes(range(8))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame_bytes(payload: bytes = b"\x11\x22\x33\x44" * 5, shape: tuple[int, ...] = (24, 32, 32)) -> bytes:
    return pack(payload, fingerprint=FP, shape=shape, codec="factorized-v1")


def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_constants() -> None:
    assert MAGIC == b"ES" and VERSION == 1 and FINGERPRINT_BYTES == 8


@given(
    payload=st.binary(max_size=300),
    shape=st.lists(st.integers(1, 5000), min_size=1, max_size=MAX_NDIM).map(tuple),
    fingerprint=st.binary(min_size=8, max_size=8),
)
@FAST
def test_round_trip(payload: bytes, shape: tuple[int, ...], fingerprint: bytes) -> None:
    data = pack(payload, fingerprint=fingerprint, shape=shape, codec="factorized-v1")
    frame = unpack(data, expected_fingerprint=fingerprint, max_elements=5000**MAX_NDIM)
    assert frame == Frame(body=payload, shape=shape, codec="factorized-v1", fingerprint=fingerprint)


def test_header_is_small() -> None:
    payload = bytes(1000)
    assert len(frame_bytes(payload, (24, 32, 32))) - len(payload) == 22  # 18-byte header + CRC32


def test_accepts_numpy_dims_and_bytes_like() -> None:
    import numpy as np

    data = pack(memoryview(b"abcd"), fingerprint=bytearray(FP), shape=np.zeros((2, 3)).shape, codec="factorized-v1")
    assert pack(b"abcd", fingerprint=FP, shape=(np.int64(2), np.int32(3)), codec="factorized-v1") == data
    assert unpack(bytearray(data)) == Frame(body=b"abcd", shape=(2, 3), codec="factorized-v1", fingerprint=FP)


def test_frame_is_frozen() -> None:
    frame = unpack(frame_bytes())
    with pytest.raises(AttributeError):
        frame.shape = (1,)  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"codec": "zstd"}, "unknown codec"),
        ({"fingerprint": b"short"}, "fingerprint"),
        ({"fingerprint": "01234567"}, "fingerprint"),
        ({"shape": ()}, "dims"),
        ({"shape": (1,) * (MAX_NDIM + 1)}, "dims"),
        ({"shape": (3, 0, 2)}, "dims"),
        ({"shape": (3, -1)}, "dims"),
        ({"shape": (3, 2.0)}, "dims"),
        ({"shape": (1 << 31,)}, "dims"),
        ({"shape": (True, 2)}, "dims"),
        ({"shape": 6}, "dims"),
        ({"body": "text"}, "body"),
    ],
)
def test_pack_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"body": b"abcd", "fingerprint": FP, "shape": (2, 3), "codec": "factorized-v1", **kwargs}
    body = args.pop("body")
    with pytest.raises(BitstreamError, match=message):
        pack(body, **args)


def test_named_checks() -> None:
    data = frame_bytes()
    cases = {
        "truncated": data[:10],
        "magic": b"XX" + data[2:],
        "version": data[:2] + bytes([VERSION + 1]) + data[3:],
        "trailing": data + b"\x00",
        "CRC32": data[:-1] + bytes([data[-1] ^ 1]),
    }
    for message, bad in cases.items():
        with pytest.raises(BitstreamError, match=message):
            unpack(bad)
    with pytest.raises(BitstreamError, match="CRC32"):
        unpack(data[:20] + bytes([data[20] ^ 0x10]) + data[21:])  # a payload bit
    with pytest.raises(BitstreamError, match="fingerprint"):
        unpack(data, expected_fingerprint=b"\xff" * 8)
    with pytest.raises(BitstreamError, match="max_elements"):
        unpack(data, max_elements=24 * 32 * 32 - 1)
    assert unpack(data, max_elements=24 * 32 * 32).shape == (24, 32, 32)
    with pytest.raises(BitstreamError, match="must be bytes"):
        unpack("ES")  # type: ignore[arg-type]


def test_checks_after_crc_name_the_field() -> None:
    body = frame_bytes(b"", (2, 3))[:-4]
    # correct CRC but semantic errors: unknown codec byte, zero dim, too many dims, non-minimal varint
    unknown_codec = body[:11] + b"\x63" + body[12:]
    with pytest.raises(BitstreamError, match="unknown codec byte"):
        unpack(with_crc(unknown_codec))
    zero_dim = body[:13] + b"\x00" + body[14:]
    with pytest.raises(BitstreamError, match="dim outside"):
        unpack(with_crc(zero_dim))
    many_dims = body[:12] + bytes([MAX_NDIM + 1]) + b"\x01" * (MAX_NDIM + 1) + b"\x00"
    with pytest.raises(BitstreamError, match="dims"):
        unpack(with_crc(many_dims))
    padded = body[:13] + b"\x82\x00" + body[14:]
    with pytest.raises(BitstreamError, match="minimal varint"):
        unpack(with_crc(padded))
    long_varint = body[:13] + b"\xff" * 6 + body[14:]
    with pytest.raises(BitstreamError, match="longer than"):
        unpack(with_crc(long_varint))
    short_payload = body[:-1] + b"\x05"  # declares 5 payload bytes, none there
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(with_crc(short_payload))


@FAST
@given(cut=st.integers(0, 10_000))
def test_every_truncation_raises_bitstream_error(cut: int) -> None:
    data = frame_bytes()
    with pytest.raises(BitstreamError):
        unpack(data[: cut % len(data)])


@FAST
@given(bit=st.integers(0, 10_000), extra=st.integers(0, 10_000))
def test_every_bit_flip_raises_bitstream_error(bit: int, extra: int) -> None:
    data = bytearray(frame_bytes(shape=(3, 7)))
    for position in {bit % (8 * len(data)), extra % (8 * len(data))}:
        data[position // 8] ^= 1 << (position % 8)
    with pytest.raises(BitstreamError):
        unpack(bytes(data))


@FAST
@given(garbage=st.binary(max_size=64))
def test_garbage_only_raises_bitstream_error(garbage: bytes) -> None:
    for data in (garbage, MAGIC + bytes([VERSION]) + garbage, with_crc(MAGIC + bytes([VERSION]) + garbage)):
        try:
            frame = unpack(data)
        except BitstreamError:
            continue
        assert 1 <= len(frame.shape) <= MAX_NDIM and min(frame.shape) >= 1


def test_golden_frame_parses() -> None:
    frame = unpack((GOLDEN / "frame.bin").read_bytes(), expected_fingerprint=bytes.fromhex("0123456789abcdef"))
    assert frame.shape == (4, 6, 5) and frame.codec == "factorized-v1"


def test_frame_payload_is_a_deprecated_name_of_body() -> None:
    frame = unpack(frame_bytes(b"abcd", (2, 3)))
    assert frame.body == b"abcd"
    with pytest.warns(DeprecationWarning, match="Frame.body"):
        assert frame.payload == b"abcd"


def _laplace_codec(codec_id: str = "factorized-v3"):
    from edgesplit.codec import FactorizedCodec, discretized_laplace_pmfs

    pmfs, offsets = discretized_laplace_pmfs([0.5, 1.0, 2.0], 8)
    return FactorizedCodec(pmfs, offsets, codec_id=codec_id)


def test_encode_payload_frames_the_codec_bytes_with_shape_and_codec_id() -> None:
    import numpy as np

    codec = _laplace_codec()
    symbols = np.random.default_rng(0).integers(-12, 12, size=(3, 4, 5)).astype(np.int32)
    payload = encode_payload(codec, symbols, fingerprint=FP)
    assert payload == pack(codec.encode(symbols), fingerprint=FP, shape=(3, 4, 5), codec="factorized-v3")
    assert unpack(payload) == Frame(body=codec.encode(symbols), shape=(3, 4, 5), codec="factorized-v3",
                                    fingerprint=FP)
    np.testing.assert_array_equal(decode_payload(codec, payload, fingerprint=FP), symbols)
    np.testing.assert_array_equal(decode_payload(codec, payload, fingerprint=None, shape=(3, 4, 5)), symbols)


def test_decode_payload_checks_fingerprint_codec_shape_and_size_before_decoding() -> None:
    import numpy as np

    codec = _laplace_codec()
    symbols = np.zeros((3, 4, 5), dtype=np.int32)
    payload = encode_payload(codec, symbols, fingerprint=FP)
    with pytest.raises(BitstreamError, match="fingerprint"):
        decode_payload(codec, payload, fingerprint=bytes(8))
    with pytest.raises(BitstreamError, match="codec 'factorized-v3'.*decodes 'factorized-v2'"):
        decode_payload(_laplace_codec("factorized-v2"), payload, fingerprint=FP)
    with pytest.raises(BitstreamError, match=r"shape \(3, 4, 5\).*\(3, 5, 4\)"):
        decode_payload(codec, payload, fingerprint=FP, shape=(3, 5, 4))
    with pytest.raises(BitstreamError, match="max_elements"):
        decode_payload(codec, payload, fingerprint=FP, max_elements=59)


def test_codec_bytes_come_from_the_one_table() -> None:
    from edgesplit import bitstream, codec

    assert bitstream.CODEC_IDS == {1: "factorized-v1", 2: "factorized-v2", 3: "factorized-v3"}  # pinned by golden frames
    assert tuple(bitstream.CODEC_IDS.values()) == codec.CODEC_IDS
    for byte, name in bitstream.CODEC_IDS.items():
        assert pack(b"", fingerprint=FP, shape=(1,), codec=name)[len(MAGIC) + 1 + FINGERPRINT_BYTES] == byte
