"""Tests for edgesplit.codec: lossless round trips, escapes, rate, determinism, tables, errors, golden bytes."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgesplit import create
from edgesplit.bitstream import pack, unpack
from edgesplit.codec import (CODEC_ID, LEGACY_CODEC_ID, PRECISION, V2_CODEC_ID, FactorizedCodec,
                             discretized_laplace_pmfs)
from edgesplit.errors import BitstreamError, ConfigError

GOLDEN = Path(__file__).parent / "golden"
INT32 = np.iinfo(np.int32)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def laplace_codec(channels: int = 8, half_width: int = 24, seed: int = 0) -> FactorizedCodec:
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.3), np.log(3.0), channels))
    return FactorizedCodec(*discretized_laplace_pmfs(scales, half_width))


def sample_in_support(codec: FactorizedCodec, pmfs: np.ndarray, offsets: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [rng.choice(pmfs.shape[1], size=n, p=row / row.sum()) + off for row, off in zip(pmfs, offsets)]
    return np.stack(rows).astype(np.int32)


@st.composite
def codec_and_symbols(draw: st.DrawFn) -> tuple[FactorizedCodec, np.ndarray]:
    channels = draw(st.integers(1, 4))
    support = draw(st.integers(1, 12))
    pmfs = draw(hnp.arrays(np.float64, (channels, support), elements=st.floats(0.0, 1.0)))
    pmfs[:, 0] += 1e-3  # rows must not sum to 0
    offsets = draw(hnp.arrays(np.int64, (channels,), elements=st.integers(-50, 50)))
    rest = draw(st.lists(st.integers(1, 5), min_size=0, max_size=2))
    value = st.one_of(
        st.integers(-60, 60), st.integers(INT32.min, INT32.max), st.sampled_from([INT32.min, INT32.max, 0, -1])
    )
    symbols = draw(hnp.arrays(np.int32, (channels, *rest), elements=value))
    return FactorizedCodec(pmfs, offsets), symbols


@FAST
@given(codec_and_symbols())
def test_round_trip_random_tables(case: tuple[FactorizedCodec, np.ndarray]) -> None:
    codec, symbols = case
    payload = codec.encode(symbols)
    out = codec.decode(payload, symbols.shape)
    assert out.dtype == np.int32 and out.shape == symbols.shape
    np.testing.assert_array_equal(out, symbols)
    assert not payload or payload[-1] != 0
    # v2 is the word-aligned v1 payload less the zero high bytes of its last word (at most 3), never ending in 0
    v2 = FactorizedCodec.from_arrays(codec.to_arrays(), codec_id=V2_CODEC_ID)
    payload = v2.encode(symbols)
    np.testing.assert_array_equal(v2.decode(payload, symbols.shape), symbols)
    legacy = FactorizedCodec.from_arrays(codec.to_arrays(), codec_id=LEGACY_CODEC_ID)
    aligned = legacy.encode(symbols)
    assert len(aligned) % 4 == 0 and aligned.startswith(payload) and len(aligned) - len(payload) <= 3
    assert aligned[len(payload):] == bytes(len(aligned) - len(payload))
    assert not payload or payload[-1] != 0
    np.testing.assert_array_equal(legacy.decode(aligned, symbols.shape), symbols)


def test_out_of_support_and_int32_extremes() -> None:
    codec = laplace_codec(channels=3, half_width=4)
    symbols = np.zeros((3, 4, 4), dtype=np.int32)
    extremes = [INT32.min, INT32.max, INT32.min + 1, INT32.max - 1, 5, -5, 1 << 16, -(1 << 16) - 7, 1 << 30]
    symbols.reshape(-1)[: len(extremes)] = extremes
    symbols[2] = INT32.max
    payload = codec.encode(symbols)
    np.testing.assert_array_equal(codec.decode(payload, symbols.shape), symbols)
    # an escape costs about 16 + 6 + log2(distance) bits, not the table's tail
    assert 8 * len(payload) <= codec.information_bits(symbols) + 128


def test_wide_integer_dtypes_are_accepted_when_in_range() -> None:
    codec = laplace_codec(channels=2, half_width=3)
    symbols = np.array([[1, -70000, 3], [INT32.max, 0, INT32.min]], dtype=np.int64)
    np.testing.assert_array_equal(codec.decode(codec.encode(symbols), (2, 3)), symbols)
    np.testing.assert_array_equal(codec.decode(codec.encode(symbols.astype(np.int8)), (2, 3)), symbols.astype(np.int8))


@pytest.mark.parametrize("scale_range", [(0.3, 3.0), (0.1, 1.0), (1.0, 12.0)])
def test_rate_within_one_percent_of_information(scale_range: tuple[float, float]) -> None:
    rng = np.random.default_rng(1)
    scales = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), 16))
    pmfs, offsets = discretized_laplace_pmfs(scales, 40)
    codec = FactorizedCodec(pmfs, offsets)
    symbols = sample_in_support(codec, pmfs, offsets, 1024, seed=2).reshape(16, 32, 32)
    info = codec.information_bits(symbols)
    # information under the float tables, computed independently
    normalized = pmfs / pmfs.sum(axis=1, keepdims=True)
    index = (symbols.reshape(16, -1) - offsets[:, None]).astype(np.int64)
    assert info == pytest.approx(-np.log2(np.take_along_axis(normalized, index, axis=1)).sum(), rel=1e-9)
    payload = codec.encode(symbols)
    assert len(payload) <= 1.01 * info / 8 + 16


def test_information_bits_counts_escapes() -> None:
    codec = laplace_codec(channels=1, half_width=2)
    inside = codec.information_bits(np.array([[0]]))
    assert codec.information_bits(np.array([[3]])) == pytest.approx(16 + 6 + 0)  # distance 1 from the edge
    assert codec.information_bits(np.array([[-2 - 8]])) == pytest.approx(16 + 6 + 3)  # distance 8
    assert 0 < inside < 2


def test_to_arrays_round_trip_gives_identical_bytes() -> None:
    codec = laplace_codec(channels=6, half_width=10, seed=3)
    symbols = np.random.default_rng(4).integers(-14, 15, size=(6, 8, 8)).astype(np.int32)
    buffer = io.BytesIO()
    np.savez(buffer, **codec.to_arrays())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as stored:
        again = FactorizedCodec.from_arrays(dict(stored))
    assert again.encode(symbols) == codec.encode(symbols)
    np.testing.assert_array_equal(again.decode(codec.encode(symbols), symbols.shape), symbols)
    assert again.information_bits(symbols) == codec.information_bits(symbols)
    arrays = codec.to_arrays()
    del arrays["pmfs"]  # tables without floats still code the same
    assert FactorizedCodec.from_arrays(arrays).encode(symbols) == codec.encode(symbols)


def test_quantized_tables_are_exact() -> None:
    weights = laplace_codec().to_arrays()["weights"]
    assert (weights >= 1).all() and (weights.sum(axis=1) == 1 << PRECISION).all()


def test_same_bytes_in_other_processes() -> None:
    script = (
        "import hashlib, sys, numpy as np\n"
        "from edgesplit.codec import FactorizedCodec, discretized_laplace_pmfs\n"
        "rng = np.random.default_rng(7)\n"
        "codec = FactorizedCodec(*discretized_laplace_pmfs(np.exp(rng.uniform(-1.2, 1.1, 12)), 16))\n"
        "symbols = np.round(rng.laplace(0, 2.0, (12, 16, 16))).astype(np.int32)\n"
        "symbols[0, 0, 0] = -2**31\n"
        "print(hashlib.sha256(codec.encode(symbols)).hexdigest())\n"
        "print('torch' in sys.modules)\n"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    rng = np.random.default_rng(7)
    codec = FactorizedCodec(*discretized_laplace_pmfs(np.exp(rng.uniform(-1.2, 1.1, 12)), 16))
    symbols = np.round(rng.laplace(0, 2.0, (12, 16, 16))).astype(np.int32)
    symbols[0, 0, 0] = -(2**31)
    assert outputs == {hashlib.sha256(codec.encode(symbols)).hexdigest() + "\nFalse\n"}


@pytest.mark.parametrize("codec_id, name", [(LEGACY_CODEC_ID, "frame.bin"), (V2_CODEC_ID, "frame_v2.bin"),
                                            (CODEC_ID, "frame_v3.bin")])
def test_golden_frame_is_reproduced_byte_for_byte(codec_id: str, name: str) -> None:
    with np.load(GOLDEN / "codec_tables.npz", allow_pickle=False) as stored:
        codec = FactorizedCodec.from_arrays(dict(stored), codec_id=codec_id)
        pmfs, offsets = stored["pmfs"], stored["offsets"]
    symbols = np.load(GOLDEN / "symbols.npy", allow_pickle=False)
    golden = (GOLDEN / name).read_bytes()
    fingerprint = bytes.fromhex("0123456789abcdef")
    assert pack(codec.encode(symbols), fingerprint=fingerprint, shape=symbols.shape, codec=codec.codec_id) == golden
    # quantizing the float tables again gives the stored weights
    assert FactorizedCodec(pmfs, offsets, codec_id=codec_id).encode(symbols) == codec.encode(symbols)
    frame = unpack(golden, expected_fingerprint=fingerprint)
    assert frame.codec == codec_id
    np.testing.assert_array_equal(codec.decode(frame.body, frame.shape), symbols)


def test_golden_v2_frame_is_the_v1_frame_less_zero_bytes() -> None:
    v1 = unpack((GOLDEN / "frame.bin").read_bytes())
    v2 = unpack((GOLDEN / "frame_v2.bin").read_bytes())
    assert v1.body.startswith(v2.body) and 0 < len(v1.body) - len(v2.body) <= 3
    assert v1.body[len(v2.body):] == bytes(len(v1.body) - len(v2.body))


@pytest.mark.parametrize("codec_id", [CODEC_ID, V2_CODEC_ID, LEGACY_CODEC_ID])
def test_registered_as_codec_component(codec_id: str) -> None:
    pmfs, offsets = discretized_laplace_pmfs([1.0, 2.0], 5)
    original = FactorizedCodec(pmfs, offsets, codec_id=codec_id)
    codec = create("codec", codec_id, tables=original.to_arrays())  # what Bundle.codec does with a bundle's tables
    assert isinstance(codec, FactorizedCodec) and codec.num_channels == 2 and codec.codec_id == codec_id
    symbols = np.array([[[0, 3, -7, 40]], [[1, -1, 2, 0]]], dtype=np.int32)
    assert codec.encode(symbols) == original.encode(symbols)
    with pytest.raises(ConfigError, match="codec tables lack"):
        create("codec", codec_id, tables={"weights": original.to_arrays()["weights"]})
    with pytest.raises(ConfigError, match="unknown codec id"):
        FactorizedCodec(pmfs, offsets, codec_id="factorized-v9")


@pytest.mark.parametrize(
    "pmfs, offsets",
    [
        (np.ones(5), np.zeros(1, dtype=np.int64)),  # 1-D
        (np.array([[0.5, np.nan]]), np.zeros(1, dtype=np.int64)),
        (np.array([[0.5, np.inf]]), np.zeros(1, dtype=np.int64)),
        (np.array([[0.5, -0.1]]), np.zeros(1, dtype=np.int64)),
        (np.array([[0.5, 0.5], [0.0, 0.0]]), np.zeros(2, dtype=np.int64)),
        (np.array([["a", "b"]]), np.zeros(1, dtype=np.int64)),
        (np.ones((1, 3)), np.zeros(2, dtype=np.int64)),  # offsets shape
        (np.ones((1, 3)), np.zeros(1, dtype=np.float64)),  # offsets dtype
        (np.ones((1, 3)), np.array([INT32.max - 1])),  # support past int32
        (np.ones((1, (1 << 16) + 1)), np.zeros(1, dtype=np.int64)),  # support too wide
    ],
)
def test_bad_tables_raise_config_error(pmfs: np.ndarray, offsets: np.ndarray) -> None:
    with pytest.raises(ConfigError):
        FactorizedCodec(pmfs, offsets)


def test_bad_stored_tables_raise_config_error() -> None:
    good = laplace_codec(channels=2, half_width=3).to_arrays()
    for key, value in [
        ("weights", good["weights"] + 1),  # rows no longer sum to 2^24
        ("weights", np.zeros(3, dtype=np.int64)),
        ("precision", np.array(16)),
        ("pmfs", good["pmfs"][:, :-1]),
    ]:
        with pytest.raises(ConfigError):
            FactorizedCodec.from_arrays({**good, key: value})
    with pytest.raises(ConfigError, match="lack"):
        FactorizedCodec.from_arrays({"pmfs": good["pmfs"]})


@pytest.mark.parametrize(
    "symbols",
    [
        np.zeros((2, 3), dtype=np.float32),
        np.zeros((3, 3), dtype=np.int32),  # wrong channel count
        np.zeros((2, 0), dtype=np.int32),
        np.zeros((), dtype=np.int32),
        np.array([[0, 1 << 40], [0, 0]], dtype=np.int64),
        np.array([[0, 1 << 31], [0, 0]], dtype=np.uint32),
        np.zeros((2, 3), dtype=bool),
    ],
)
def test_bad_symbols_raise_bitstream_error(symbols: np.ndarray) -> None:
    codec = laplace_codec(channels=2, half_width=3)
    with pytest.raises(BitstreamError):
        codec.encode(symbols)


def test_decode_rejects_bad_payloads_and_shapes() -> None:
    codec = laplace_codec(channels=2, half_width=3)
    payload = codec.encode(np.arange(-6, 6, dtype=np.int32).reshape(2, 6))
    legacy = FactorizedCodec.from_arrays(codec.to_arrays(), codec_id=LEGACY_CODEC_ID)
    with pytest.raises(BitstreamError, match="multiple of 4"):
        legacy.decode(legacy.encode(np.arange(-6, 6, dtype=np.int32).reshape(2, 6))[:-1], (2, 6))
    with pytest.raises(BitstreamError, match="zero byte"):
        codec.decode(payload + b"\x00", (2, 6))
    with pytest.raises(BitstreamError, match="ANS"):
        legacy.decode(b"\x01\x00\x00\x00\x00\x00\x00\x00", (2, 6))  # a last word of 0 is not a coder state
    with pytest.raises(BitstreamError, match="corrupted"):
        codec.decode(payload + b"\x07\x00\x00\x00", (2, 6))
    in_support = codec.encode(np.arange(-6, 6, dtype=np.int32).reshape(2, 6) // 2)
    with pytest.raises(BitstreamError, match="does not end where its encoder began"):
        codec.decode(in_support, (2, 3))
    with pytest.raises(BitstreamError, match="bytes"):
        codec.decode("payload", (2, 6))  # type: ignore[arg-type]
    decoded = codec.decode(memoryview(in_support), (np.int64(2), 6))
    np.testing.assert_array_equal(decoded, np.arange(-6, 6).reshape(2, 6) // 2)
    for shape in [(3, 6), (2, 0), (), ("a",), (2, 6.0)]:
        with pytest.raises(BitstreamError):
            codec.decode(payload, shape)  # type: ignore[arg-type]


@FAST
@given(garbage=st.binary(min_size=0, max_size=64), width=st.integers(1, 40))
def test_decode_of_garbage_raises_bitstream_error_or_returns_the_shape(garbage: bytes, width: int) -> None:
    codec = laplace_codec(channels=3, half_width=2)
    try:
        out = codec.decode(garbage, (3, width))
    except BitstreamError:
        return
    assert out.shape == (3, width) and out.dtype == np.int32


def test_laplace_tables() -> None:
    pmfs, offsets = discretized_laplace_pmfs([0.5, 2.0], 30)
    assert pmfs.shape == (2, 61) and (offsets == -30).all()
    np.testing.assert_allclose(pmfs.sum(axis=1), 1.0 - np.exp(-30.5 / np.array([0.5, 2.0])), rtol=1e-12)
    np.testing.assert_allclose(pmfs, pmfs[:, ::-1])
    assert pmfs[0, 30] == pytest.approx(1 - np.exp(-1.0))
    for scales, half_width in [([], 3), ([0.0], 3), ([1.0], -1), ([1.0], 2.5)]:
        with pytest.raises(ConfigError):
            discretized_laplace_pmfs(scales, half_width)  # type: ignore[arg-type]


def _flips(payload: bytes) -> list[bytes]:
    out = []
    for bit in range(len(payload) * 8):
        b = bytearray(payload)
        b[bit // 8] ^= 1 << (bit % 8)
        out.append(bytes(b))
    return out


def test_v3_detects_corruption_that_v2_decodes() -> None:
    """A student's tables (``student_codec.npz``: the beta 4e-5 split student, many channels it does not use) and
    two of its latents: a corrupted v2 payload's coder often runs dry, falls to the empty state and decodes
    cleanly into other symbols; v3's check state catches every single-bit flip of these payloads."""
    with np.load(GOLDEN / "student_codec.npz", allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    latents = arrays.pop("symbols")
    v3 = FactorizedCodec.from_arrays(arrays)
    v2 = FactorizedCodec.from_arrays(arrays, codec_id=V2_CODEC_ID)
    undetected = {CODEC_ID: 0, V2_CODEC_ID: 0}
    for symbols in latents:
        for codec in (v3, v2):
            for corrupt in _flips(codec.encode(symbols))[::3]:
                try:
                    codec.decode(corrupt, symbols.shape)
                    undetected[codec.codec_id] += 1
                except BitstreamError:
                    pass
    assert undetected[CODEC_ID] == 0, undetected
    assert undetected[V2_CODEC_ID] > 100, undetected  # what the check state is for


def test_older_layouts_still_decode_and_are_told_apart() -> None:
    codec = laplace_codec(channels=3, half_width=4)
    symbols = np.arange(-18, 18, dtype=np.int32).reshape(3, 3, 4) // 4
    for codec_id in (LEGACY_CODEC_ID, V2_CODEC_ID):
        old = FactorizedCodec.from_arrays(codec.to_arrays(), codec_id=codec_id)
        np.testing.assert_array_equal(old.decode(old.encode(symbols), symbols.shape), symbols)
        with pytest.raises(BitstreamError):
            codec.decode(old.encode(symbols), symbols.shape)  # a v3 decoder refuses an older payload
