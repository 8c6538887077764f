"""``edgesplit demo``: the main job end to end on the committed weights (grows with the SDK).

Today: the registered components and a device -> bytes -> server round trip of a realistic latent through the
factorized codec and the bitstream container.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

__all__ = ["register_cli", "run_codec_demo"]


def run_codec_demo(seed: int = 0) -> dict[str, float]:
    """Code a 24x16x16 Laplace-distributed latent and check the round trip is bit-exact."""
    from . import bitstream
    from .codec import FactorizedCodec, discretized_laplace_pmfs

    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=24))
    pmfs, offsets = discretized_laplace_pmfs(scales, half_width=24)
    codec = FactorizedCodec(pmfs, offsets)
    symbols = np.round(rng.laplace(0.0, scales[:, None, None], size=(24, 16, 16))).astype(np.int32)
    fingerprint = bytes(8)
    t0 = time.perf_counter()
    frame = bitstream.pack(codec.encode(symbols), fingerprint=fingerprint, shape=symbols.shape, codec=codec.codec_id)
    t1 = time.perf_counter()
    f = bitstream.unpack(frame, expected_fingerprint=fingerprint)
    decoded = codec.decode(f.payload, f.shape)
    t2 = time.perf_counter()
    if not np.array_equal(decoded, symbols):
        raise RuntimeError("codec round trip was not bit-exact")  # a bug, not user error
    return {"symbols": float(symbols.size), "payload_bytes": float(len(frame)),
            "information_bytes": codec.information_bits(symbols) / 8, "encode_ms": (t1 - t0) * 1e3,
            "decode_ms": (t2 - t1) * 1e3}


def _cmd_demo(args: argparse.Namespace) -> int:
    from .registry import KINDS, available, broken_plugins

    print("edgesplit components:")
    for kind in KINDS:
        print(f"  {kind}: {', '.join(available(kind)) or '(none)'}")
    for b in broken_plugins():
        print(f"  BROKEN plugin {b.name}: {b.error}")
    r = run_codec_demo()
    print(f"codec round trip: {int(r['symbols'])} symbols -> {int(r['payload_bytes'])} bytes "
          f"(information content {r['information_bytes']:.0f} bytes), encode {r['encode_ms']:.2f} ms, "
          f"decode {r['decode_ms']:.2f} ms, bit-exact")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("demo", help="run the main job end to end on the committed weights",
                        description=__doc__)
    sp.add_argument("--images", help="directory of your own images (default: samples/images)")
    sp.set_defaults(func=_cmd_demo)
