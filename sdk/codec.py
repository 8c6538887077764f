"""Factorized entropy codec: int32 symbols of shape (C, ...) <-> ANS-coded bytes (a frame's body), one pmf per channel.

Torch-free; the coder is ``constriction``'s ANS. Values outside a table's support take an escape path (lossless).
``factorized-v3`` payloads start the coder from a fixed check state that decoding must end on exactly, and drop the
zero high bytes of the coder's last word; ``factorized-v2`` (no check state) and ``factorized-v1`` (word-aligned)
payloads from older bundles still decode.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Mapping

import constriction
import numpy as np

from ._codec_ids import CODEC_BYTES, CODEC_ID, LEGACY_CODEC_ID, V2_CODEC_ID
from .errors import BitstreamError, ConfigError
from .registry import register

__all__ = [
    "CODEC_ID",
    "CODEC_IDS",
    "LEGACY_CODEC_ID",
    "V2_CODEC_ID",
    "PRECISION",
    "ESCAPE_WEIGHT",
    "MAX_SUPPORT",
    "FactorizedCodec",
    "discretized_laplace_pmfs",
]

CODEC_IDS: tuple[str, ...] = tuple(CODEC_BYTES)  # oldest first
# v3's coder starts from this state instead of 0, and a payload must decode back to exactly it. A corrupted v1/v2
# payload often decodes cleanly: once its words run out the coder's state falls to 0, the empty state, and stays
# there; a v3 payload must instead land on these 17 bits (0 to 4 bytes more per payload, 0 on average on the
# demo student's sample payloads).
_CHECK_STATE = 0x1A5A5
PRECISION = 24  # constriction's default ANS coder works with 24-bit probabilities
TOTAL = 1 << PRECISION
ESCAPE_WEIGHT = 1 << (PRECISION - 16)  # escape probability 2^-16: ~2e-5 bits per in-support symbol
MAX_SUPPORT = 1 << 16  # symbols per table; keeps every entry >= 1 with room to spare

_INT32_MIN = int(np.iinfo(np.int32).min)
_INT32_MAX = int(np.iinfo(np.int32).max)
# An escaped value is a distance d >= 1 from the support edge (d < 2^32), written as a 6-bit header
# (side of the support, bit length of d) followed by the bits of d below its leading one, in two chunks
# of at most 16 bits (constriction's uniform model holds fewer than 2^24 values).
_HEADER_SIZE = 64
_CHUNK_BITS = 16

_stream = constriction.stream  # type: ignore[attr-defined]


def _quantize_row(pmf: np.ndarray) -> np.ndarray:
    """Integer weights (K + 1,), each >= 1, summing to exactly TOTAL; the last one is the escape.

    Plain IEEE float64 arithmetic (correctly rounded divide/multiply, exact fsum) so that every process and
    platform derives the same table from the same floats.
    """
    k = pmf.shape[0]
    free = TOTAL - ESCAPE_WEIGHT - k  # weight left after giving every symbol 1
    scaled = (pmf / math.fsum(pmf.tolist())) * float(free)
    base = np.floor(scaled)
    weights = base.astype(np.int64) + 1
    remainder = scaled - base
    deficit = TOTAL - ESCAPE_WEIGHT - int(weights.sum())
    order = np.argsort(-remainder, kind="stable")  # largest remainder first, ties by index
    while deficit > 0:
        take = min(deficit, k)
        weights[order[:take]] += 1
        deficit -= take
    while deficit < 0:  # cannot happen with float64 rounding, handled so the sum is exact regardless
        big = np.argsort(-weights, kind="stable")
        take = min(-deficit, int((weights > 1).sum()))
        weights[big[:take]] -= 1
        deficit += take
    return np.concatenate([weights, np.array([ESCAPE_WEIGHT], dtype=np.int64)])


def _check_pmfs(pmfs: Any) -> np.ndarray:
    arr = np.asarray(pmfs)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ConfigError(f"codec pmfs must be a 2-D array (channels, support), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ConfigError(f"codec pmfs must be real numbers, got dtype {arr.dtype}")
    if arr.shape[1] > MAX_SUPPORT:
        raise ConfigError(
            f"codec pmfs have support {arr.shape[1]} > {MAX_SUPPORT}; narrow the tables (escapes cover the tails)"
        )
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ConfigError("codec pmfs contain NaN or infinity; every entry must be a finite probability")
    if (arr < 0).any():
        raise ConfigError("codec pmfs contain negative entries; probabilities must be >= 0")
    zero_rows = np.flatnonzero(arr.sum(axis=1) <= 0)
    if zero_rows.size:
        raise ConfigError(f"codec pmf rows {zero_rows[:8].tolist()} sum to 0; each channel needs positive mass")
    return arr


def _check_offsets(offsets: Any, channels: int, support: int) -> np.ndarray:
    arr = np.asarray(offsets)
    if arr.shape != (channels,) or arr.dtype.kind not in "iu":
        raise ConfigError(
            f"codec offsets must be an integer array of shape ({channels},), got {arr.dtype} {arr.shape}"
        )
    if int(arr.min()) < _INT32_MIN or int(arr.max()) + support - 1 > _INT32_MAX:
        raise ConfigError("codec offsets put a table's support outside the int32 range; shift the offsets")
    return arr.astype(np.int64)


def _check_weights(weights: Any) -> np.ndarray:
    arr = np.asarray(weights)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2 or arr.dtype.kind not in "iu":
        raise ConfigError(
            f"codec weights must be a 2-D integer array (channels, support + 1), got {arr.dtype} {arr.shape}"
        )
    if arr.shape[1] - 1 > MAX_SUPPORT:
        raise ConfigError(f"codec weights have support {arr.shape[1] - 1} > {MAX_SUPPORT}")
    arr = arr.astype(np.int64)
    if (arr < 1).any() or (arr > TOTAL).any() or (arr.sum(axis=1) != TOTAL).any():
        raise ConfigError(
            f"codec weights must be >= 1 and sum to 2^{PRECISION} per channel; the tables file is corrupted"
        )
    return arr


def _trailing_zero_bytes(data: bytes) -> int:
    """How many of the last word's high bytes (at most 3) are zero; v2 leaves them out."""
    count = 0
    while count < 3 and count < len(data) and data[len(data) - 1 - count] == 0:
        count += 1
    return count


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Exact bit length of positive int64 values below 2^53 (frexp is exact, unlike log2)."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)


class FactorizedCodec:
    """Codes an integer array of shape (C, ...) with one fixed integer pmf per channel (axis 0).

    ``pmfs[c, k]`` is the probability of symbol ``k + offsets[c]``. The float tables are quantized once, at
    construction, to integer weights summing to 2^24 (each >= 1, plus an escape entry); those weights are
    the code, travel in ``to_arrays()``, and give identical payload bytes in every process.
    """

    def __init__(self, pmfs: Any, offsets: Any, *, codec_id: str = CODEC_ID) -> None:
        floats = _check_pmfs(pmfs)
        offs = _check_offsets(offsets, floats.shape[0], floats.shape[1])
        weights = np.stack([_quantize_row(row) for row in floats])
        self._setup(weights, offs, floats, codec_id)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], *, codec_id: str = CODEC_ID) -> FactorizedCodec:
        """Rebuild a codec from ``to_arrays()`` output; the stored integer weights are used as they are.

        ``codec_id`` is the payload layout the tables code with (a bundle's manifest names it).
        """
        missing = [key for key in ("weights", "offsets", "precision") if key not in arrays]
        if missing:
            raise ConfigError(f"codec tables lack {missing}; expected the keys written by FactorizedCodec.to_arrays")
        precision = np.asarray(arrays["precision"])
        if precision.shape != () or precision.dtype.kind not in "iu" or int(precision) != PRECISION:
            raise ConfigError(f"codec tables have precision {precision!r}; this version reads only {PRECISION}")
        weights = _check_weights(arrays["weights"])
        support = weights.shape[1] - 1
        offsets = _check_offsets(arrays["offsets"], weights.shape[0], support)
        floats = _check_pmfs(arrays["pmfs"]) if "pmfs" in arrays else weights[:, :-1].astype(np.float64)
        if floats.shape != (weights.shape[0], support):
            raise ConfigError(f"codec pmfs shape {floats.shape} does not match weights shape {weights.shape}")
        codec = cls.__new__(cls)
        codec._setup(weights, offsets, floats, codec_id)
        return codec

    def _setup(self, weights: np.ndarray, offsets: np.ndarray, floats: np.ndarray, codec_id: str) -> None:
        if codec_id not in CODEC_IDS:
            raise ConfigError(f"unknown codec id {codec_id!r}; this version codes {', '.join(CODEC_IDS)}")
        self._codec_id = codec_id
        self._weights = weights
        self._weights.flags.writeable = False
        self._offsets = offsets
        self._offsets.flags.writeable = False
        self._pmfs = floats
        self._pmfs.flags.writeable = False
        self._support = weights.shape[1] - 1
        # Passing (weight - 1) makes constriction's fast quantizer reproduce these integer weights exactly:
        # it gives each entry 1 and scales the rest by (2^24 - n) / sum = 1.0.
        self._models = tuple(
            _stream.model.Categorical((row - 1).astype(np.float64), perfect=False) for row in weights
        )
        self._header_model = _stream.model.Uniform(_HEADER_SIZE)
        self._chunk_family = _stream.model.Uniform()
        normalized = floats / floats.sum(axis=1, keepdims=True)
        quantized_bits = PRECISION - np.log2(weights.astype(np.float64))
        with np.errstate(divide="ignore"):
            float_bits = -np.log2(normalized)
        # A zero float probability would cost infinitely many bits; count what the code actually spends.
        self._cost_bits = quantized_bits.copy()
        self._cost_bits[:, :-1] = np.where(normalized > 0, float_bits, quantized_bits[:, :-1])

    @property
    def codec_id(self) -> str:
        """The payload layout: ``factorized-v3`` (check state, byte-trimmed), or the older ``factorized-v2``
        (byte-trimmed) or ``factorized-v1`` (word-aligned)."""
        return self._codec_id

    @property
    def num_channels(self) -> int:
        """Number of channels C (tables)."""
        return int(self._weights.shape[0])

    @property
    def support(self) -> int:
        """Number of symbols K each table covers before the escape entry."""
        return self._support

    def __repr__(self) -> str:
        return f"FactorizedCodec(channels={self.num_channels}, support={self._support}, codec_id={self._codec_id!r})"

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The tables as plain numeric arrays (``np.savez``-able without pickle)."""
        return {
            "pmfs": self._pmfs.copy(),
            "offsets": self._offsets.copy(),
            "weights": self._weights.copy(),
            "precision": np.array(PRECISION, dtype=np.int64),
        }

    # -- coding -------------------------------------------------------------------------------------------

    def _check_symbols(self, symbols: Any) -> np.ndarray:
        arr = np.asarray(symbols)
        if arr.dtype.kind not in "iu":
            raise BitstreamError(f"symbols must be an integer array, got dtype {arr.dtype}; round and cast to int32")
        if arr.ndim < 1 or arr.shape[0] != self.num_channels or arr.size == 0:
            raise BitstreamError(
                f"symbols must have shape ({self.num_channels}, ...) with no empty axis, got {arr.shape}"
            )
        if arr.dtype.itemsize > 4 or arr.dtype == np.uint32:
            if int(arr.min()) < _INT32_MIN or int(arr.max()) > _INT32_MAX:
                raise BitstreamError("symbols must fit in int32; got values outside [-2^31, 2^31 - 1]")
        return arr.reshape(self.num_channels, -1).astype(np.int64)

    def _split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Table indices (escape = K) and, for escaped values, channel, side (1 = above) and distance."""
        index = flat - self._offsets[:, None]
        inside = (index >= 0) & (index < self._support)
        cat = np.where(inside, index, self._support).astype(np.int32)
        channel, position = np.nonzero(~inside)
        index = index[channel, position]
        above = (index >= self._support).astype(np.int64)
        distance = np.where(above == 1, index - (self._support - 1), -index)
        return cat, channel, above, distance

    def information_bits(self, symbols: Any) -> float:
        """Sum of -log2 p(symbol) under the float tables; an escaped value counts what its escape costs."""
        flat = self._check_symbols(symbols)
        cat, _, _, distance = self._split(flat)
        bits = float(np.take_along_axis(self._cost_bits, cat.astype(np.int64), axis=1).sum())
        if distance.size:
            bits += float(distance.size * math.log2(_HEADER_SIZE) + (_bit_length(distance) - 1).sum())
        return bits

    def encode(self, symbols: Any) -> bytes:
        """Code ``symbols`` (integer array of shape (C, ...)) into bytes (the body that a bitstream frame carries)."""
        flat = self._check_symbols(symbols)
        cat, _, above, distance = self._split(flat)
        coder = (_stream.stack.AnsCoder(np.array([_CHECK_STATE], dtype=np.uint32)) if self._codec_id == CODEC_ID
                 else _stream.stack.AnsCoder())
        # ANS is a stack: push in reverse of the decode order (channel symbols, headers, low, high chunks).
        if distance.size:
            length = _bit_length(distance)
            mantissa = distance - np.left_shift(np.int64(1), length - 1)
            low_bits = np.minimum(length - 1, _CHUNK_BITS)
            high_bits = length - 1 - low_bits
            low = mantissa & (np.left_shift(np.int64(1), low_bits) - 1)
            high = mantissa >> _CHUNK_BITS
            for values, nbits in ((high, high_bits), (low, low_bits)):
                used = nbits > 0
                if used.any():
                    sizes = np.left_shift(1, nbits[used]).astype(np.int32)
                    coder.encode_reverse(values[used].astype(np.int32), self._chunk_family, sizes)
            headers = (above * 32 + (length - 1)).astype(np.int32)
            coder.encode_reverse(headers, self._header_model)
        for channel in range(self.num_channels - 1, -1, -1):
            coder.encode_reverse(cat[channel], self._models[channel])
        data = coder.get_compressed().astype("<u4").tobytes()
        if self._codec_id == LEGACY_CODEC_ID:
            return data
        # The last word is the top of the coder's state (never 0: constriction leaves out empty words), and
        # its high bytes are often 0: drop up to three of them; decode pads the word back out.
        return data[: len(data) - _trailing_zero_bytes(data)]

    def decode(self, body: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """Decode coded bytes (a frame's body) into an int32 array of ``shape``; corrupted bytes raise
        BitstreamError."""
        shape = self._check_shape(shape)
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise BitstreamError(f"coded body must be bytes, got {type(body).__name__}")
        data = bytes(body)
        if self._codec_id == LEGACY_CODEC_ID:
            if len(data) % 4:
                raise BitstreamError(
                    f"coded body has {len(data)} bytes, not a multiple of 4; it is truncated or not a "
                    f"{LEGACY_CODEC_ID} body"
                )
        else:
            if _trailing_zero_bytes(data):
                raise BitstreamError(
                    f"coded body ends in a zero byte, which a {self._codec_id} encoder never writes; it is corrupted"
                )
            data += bytes(-len(data) % 4)
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        try:
            coder = _stream.stack.AnsCoder(words)
        except ValueError as exc:
            raise BitstreamError(f"coded body is not a valid ANS stream ({exc}); it is corrupted") from exc
        count = math.prod(shape[1:])
        cat = np.empty((self.num_channels, count), dtype=np.int32)
        for channel in range(self.num_channels):
            cat[channel] = coder.decode(self._models[channel], count)
        escaped = cat == self._support
        values = cat.astype(np.int64) + self._offsets[:, None]
        if escaped.any():
            channel, position = np.nonzero(escaped)
            headers = coder.decode(self._header_model, int(channel.size)).astype(np.int64)
            above = headers // 32
            length = headers % 32 + 1
            low_bits = np.minimum(length - 1, _CHUNK_BITS)
            high_bits = length - 1 - low_bits
            chunks = []
            for nbits in (low_bits, high_bits):
                used = nbits > 0
                chunk = np.zeros(nbits.shape, dtype=np.int64)
                if used.any():
                    sizes = np.left_shift(1, nbits[used]).astype(np.int32)
                    chunk[used] = coder.decode(self._chunk_family, sizes)
                chunks.append(chunk)
            distance = np.left_shift(np.int64(1), length - 1) + chunks[0] + (chunks[1] << _CHUNK_BITS)
            low_edge = self._offsets[channel]
            value = np.where(above == 1, low_edge + self._support - 1 + distance, low_edge - distance)
            if (value < _INT32_MIN).any() or (value > _INT32_MAX).any():
                raise BitstreamError("coded body decodes to a value outside int32; it is corrupted")
            values[channel, position] = value
        self._check_end(coder, shape)
        return values.astype(np.int32).reshape(shape)

    def _check_end(self, coder: Any, shape: tuple[int, ...]) -> None:
        """Every word consumed, and the coder back at the state encoding started from (v3: the check state)."""
        if self._codec_id == CODEC_ID:
            rest = coder.get_compressed()
            if rest.shape == (1,) and int(rest[0]) == _CHECK_STATE:
                return
        elif coder.is_empty():
            return
        raise BitstreamError(
            f"coded body does not end where its encoder began after decoding shape {shape} "
            f"({coder.num_valid_bits()} bits left); it is corrupted, or was coded with other tables or another shape"
        )

    def _check_shape(self, shape: Any) -> tuple[int, ...]:
        try:
            dims = tuple(operator.index(d) for d in shape)
        except TypeError as exc:
            raise BitstreamError(f"shape must be a tuple of ints, got {shape!r}") from exc
        if not dims or dims[0] != self.num_channels or any(d < 1 for d in dims):
            raise BitstreamError(
                f"shape {dims} is not (C={self.num_channels}, ...) with positive dims; pass the frame's shape"
            )
        return dims


def _tables_factory(codec_id: str, layout: str) -> Any:
    def build(tables: Mapping[str, np.ndarray]) -> FactorizedCodec:
        return FactorizedCodec.from_arrays(tables, codec_id=codec_id)

    build.__name__ = build.__qualname__ = f"factorized_codec_{codec_id.rsplit('-', 1)[-1]}"
    build.__doc__ = f"A ``FactorizedCodec`` from a bundle's tables, coding {layout}."
    return build


# Registry kind ``codec``: each codec id names a factory that rebuilds the codec from the tables a bundle stores
# (``create("codec", id, tables=arrays)``, what ``Bundle.codec`` does); one table of ids in ``_codec_ids``.
for _id, _layout in ((CODEC_ID, "factorized-v3 payloads (check state, byte-trimmed)"),
                     (V2_CODEC_ID, "factorized-v2 payloads, without the check state (bundles exported before v3)"),
                     (LEGACY_CODEC_ID, "word-aligned factorized-v1 payloads (bundles exported before v2)")):
    register("codec", _id)(_tables_factory(_id, _layout))


def discretized_laplace_pmfs(scales: Any, half_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-mean Laplace densities integrated over unit bins, symbols -half_width..half_width.

    Returns ``(pmfs, offsets)`` for ``FactorizedCodec``: pmfs (C, 2 * half_width + 1) float64 (tail mass
    beyond the support is left out: those values take the escape path), offsets all ``-half_width``.
    """
    b = np.asarray(scales, dtype=np.float64)
    if b.ndim != 1 or b.size == 0 or not np.isfinite(b).all() or (b <= 0).any():
        raise ConfigError("laplace scales must be a non-empty 1-D array of positive finite numbers")
    if isinstance(half_width, bool) or not isinstance(half_width, (int, np.integer)) or half_width < 0:
        raise ConfigError(f"half_width must be a non-negative int, got {half_width!r}")
    if 2 * int(half_width) + 1 > MAX_SUPPORT:
        raise ConfigError(f"half_width {half_width} gives more than {MAX_SUPPORT} symbols")
    k = np.abs(np.arange(-int(half_width), int(half_width) + 1, dtype=np.float64))
    edge_in = np.maximum(k - 0.5, 0.0)[None, :] / b[:, None]
    edge_out = (k + 0.5)[None, :] / b[:, None]
    # P(|x| in bin) split evenly between +k and -k, except the zero bin which is whole.
    mass = np.exp(-edge_in) - np.exp(-edge_out)
    pmfs = np.where(k[None, :] == 0, mass, 0.5 * mass)
    offsets = np.full(b.size, -int(half_width), dtype=np.int64)
    return pmfs, offsets
