"""Device side: image -> payload bytes, with nothing but a bundle, a runtime backend, numpy and constriction.

    python samples/device_encode.py BUNDLE IMAGE [IMAGE ...] --out payloads/
    # then send each payloads/*.bin to the server (POST /v1/decode, application/octet-stream)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgesplit.runtime import DeviceEncoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", default="payloads")
    ap.add_argument("--backend", default="openvino", choices=["openvino", "onnxruntime", "tensorrt"])
    args = ap.parse_args()

    encoder = DeviceEncoder.open(args.bundle, backend=args.backend)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for image in args.images:
        payload = encoder.encode(image)  # preprocessing, encoder graph, entropy coding, bitstream frame
        (out / f"{Path(image).stem}.bin").write_bytes(payload)
        print(f"{image}: {len(payload)} bytes in {encoder.last_timings['total_ms']:.1f} ms")


if __name__ == "__main__":
    main()
