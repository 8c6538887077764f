"""Regenerate the codec/bitstream golden files; run only when the payload format changes on purpose.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgesplit.bitstream import pack
from edgesplit.codec import CODEC_ID, LEGACY_CODEC_ID, V2_CODEC_ID, FactorizedCodec, discretized_laplace_pmfs

HERE = Path(__file__).resolve().parent
FINGERPRINT = bytes.fromhex("0123456789abcdef")
SHAPE = (4, 6, 5)


def make(codec_id: str = LEGACY_CODEC_ID) -> tuple[FactorizedCodec, np.ndarray, bytes]:
    """Tables, symbols (a few escapes, int32 extremes included) and the packed frame in ``codec_id``'s layout."""
    rng = np.random.default_rng(20240611)
    scales = np.array([0.3, 0.8, 1.5, 3.0])
    pmfs, offsets = discretized_laplace_pmfs(scales, 6)
    offsets = offsets + np.array([0, 1, -2, 3])
    codec = FactorizedCodec(pmfs, offsets, codec_id=codec_id)
    symbols = np.round(rng.laplace(0.0, scales[:, None, None], SHAPE)).astype(np.int32) + offsets[:, None, None] + 6
    symbols[0, 0, :4] = [np.iinfo(np.int32).min, np.iinfo(np.int32).max, 40, -40]
    frame = pack(codec.encode(symbols), fingerprint=FINGERPRINT, shape=SHAPE, codec=codec.codec_id)
    return codec, symbols.astype(np.int32), frame


def main() -> None:
    codec, symbols, frame = make()
    np.savez(HERE / "codec_tables.npz", **codec.to_arrays())
    np.save(HERE / "symbols.npy", symbols, allow_pickle=False)
    (HERE / "frame.bin").write_bytes(frame)
    (HERE / "frame_v2.bin").write_bytes(make(V2_CODEC_ID)[2])
    (HERE / "frame_v3.bin").write_bytes(make(CODEC_ID)[2])


if __name__ == "__main__":
    main()
