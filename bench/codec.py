"""Entropy codec benchmark: FactorizedCodec payload vs information content vs zlib/zstd, and coding speed.

    python bench/codec.py --overwrite   # refreshes bench/results/codec.json (or --out FILE) and prints a markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgesplit.bitstream import pack
from edgesplit.codec import LEGACY_CODEC_ID, FactorizedCodec, discretized_laplace_pmfs

RESULTS = Path(__file__).resolve().parent / "results" / "codec.json"
SHAPES = [(24, 32, 32), (192, 16, 16)]
HALF_WIDTH = 32  # table support -32..32; rarer values take the escape path
SCALE_RANGE = (0.3, 3.0)  # per-channel Laplace scales, log-uniform
SEED = 0


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def zstd_size(raw: bytes) -> int | None:
    try:
        import zstandard
    except ImportError:
        return None
    return len(zstandard.ZstdCompressor(level=19).compress(raw))


def bench_shape(shape: tuple[int, int, int], runs: int) -> dict[str, Any]:
    rng = np.random.default_rng(SEED)
    channels = shape[0]
    scales = np.exp(rng.uniform(np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1]), channels))
    codec = FactorizedCodec(*discretized_laplace_pmfs(scales, HALF_WIDTH))
    symbols = np.round(rng.laplace(0.0, scales[:, None, None], shape)).astype(np.int32)
    if np.abs(symbols).max() > 127:
        raise SystemExit("sampled symbols do not fit int8; lower the scales")
    payload = codec.encode(symbols)
    if not np.array_equal(codec.decode(payload, shape), symbols):
        raise SystemExit(f"round trip failed for {shape}")
    frame = pack(payload, fingerprint=bytes(8), shape=shape, codec=codec.codec_id)
    raw = symbols.astype(np.int8).tobytes()
    info_bytes = codec.information_bits(symbols) / 8
    return {
        "shape": list(shape),
        "symbols": int(symbols.size),
        "escaped": int((np.abs(symbols) > HALF_WIDTH).sum()),
        "information_bytes": round(info_bytes, 1),
        "payload_bytes": len(payload),
        "frame_bytes": len(frame),
        "overhead_pct": round(100.0 * (len(payload) / info_bytes - 1.0), 3),
        "zlib9_bytes": len(zlib.compress(raw, 9)),
        "zstd19_bytes": zstd_size(raw),
        "raw_int8_bytes": len(raw),
        "encode_ms": round(median_ms(lambda: codec.encode(symbols), runs), 3),
        "decode_ms": round(median_ms(lambda: codec.decode(payload, shape), runs), 3),
    }


SMALL_SHAPE = (24, 8, 8)
SMALL_SCALES = [(0.1, 0.6), (0.2, 1.5), (0.3, 3.0)]  # about 150, 400 and 700 B of information per latent
SMALL_DRAWS = 500


def bench_small(scale_range: tuple[float, float]) -> dict[str, Any]:
    """The coder's constant cost, which dominates small payloads: mean payload - information over many latents."""
    rng = np.random.default_rng(SEED)
    scales = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), SMALL_SHAPE[0]))
    codec = FactorizedCodec(*discretized_laplace_pmfs(scales, HALF_WIDTH))
    legacy = FactorizedCodec.from_arrays(codec.to_arrays(), codec_id=LEGACY_CODEC_ID)
    info, v2, v1 = [], [], []
    for _ in range(SMALL_DRAWS):
        symbols = np.round(rng.laplace(0.0, scales[:, None, None], SMALL_SHAPE)).astype(np.int32)
        payload = codec.encode(symbols)
        if not np.array_equal(codec.decode(payload, SMALL_SHAPE), symbols):
            raise SystemExit(f"round trip failed for {SMALL_SHAPE}")
        info.append(codec.information_bits(symbols) / 8)
        v2.append(len(payload))
        v1.append(len(legacy.encode(symbols)))
    mean_info = float(np.mean(info))
    return {
        "shape": list(SMALL_SHAPE),
        "scales": list(scale_range),
        "draws": SMALL_DRAWS,
        "information_bytes": round(mean_info, 1),
        "payload_bytes": round(float(np.mean(v2)), 2),
        "overhead_bytes": round(float(np.mean(v2)) - mean_info, 2),
        "legacy_v1_overhead_bytes": round(float(np.mean(v1)) - mean_info, 2),
    }


def markdown_small(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| latent (C×H×W) | scales | information (B, mean) | payload (B, mean) | payload - information: v2 | v1 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {'×'.join(map(str, r['shape']))} | {r['scales'][0]}..{r['scales'][1]} | {r['information_bytes']:.1f} "
            f"| {r['payload_bytes']:.1f} | {r['overhead_bytes']:.2f} B | {r['legacy_v1_overhead_bytes']:.2f} B |"
        )
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| latent (C×H×W) | symbols | information (B) | payload (B) | over info | frame (B) | zlib -9 (B) "
        "| zstd -19 (B) | encode (ms) | decode (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        zstd = "n/a" if r["zstd19_bytes"] is None else str(r["zstd19_bytes"])
        lines.append(
            f"| {'×'.join(map(str, r['shape']))} | {r['symbols']} | {r['information_bytes']:.0f} "
            f"| {r['payload_bytes']} | {r['overhead_pct']:+.2f}% | {r['frame_bytes']} | {r['zlib9_bytes']} "
            f"| {zstd} | {r['encode_ms']:.2f} | {r['decode_ms']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per measurement (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (a committed result)")
    args = parser.parse_args()
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists (a committed result); pass --overwrite to replace it, or --out elsewhere")
    rows = [bench_shape(shape, args.runs) for shape in SHAPES]
    small = [bench_small(scale_range) for scale_range in SMALL_SCALES]
    result = {
        "benchmark": "entropy codec (FactorizedCodec, constriction ANS)",
        "command": "python bench/codec.py",
        "setup": {
            "tables": f"discretized Laplace, support -{HALF_WIDTH}..{HALF_WIDTH}, scales log-uniform "
            f"{SCALE_RANGE[0]}..{SCALE_RANGE[1]} per channel",
            "symbols": "round(Laplace(0, scale_c)), one draw per element",
            "seed": SEED,
            "runs": args.runs,
        },
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
            "constriction": metadata.version("constriction"),
        },
        "results": rows,
        "small_payloads": small,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print()
    print(markdown_small(small))


if __name__ == "__main__":
    main()
