"""Server side: payload bytes -> prediction, in-process (the HTTP service `edgesplit serve BUNDLE` does the same).

    python samples/server_decode.py BUNDLE payloads/*.bin
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgesplit.errors import BitstreamError
from edgesplit.runtime import ServerDecoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("payloads", nargs="+")
    ap.add_argument("--backend", default="onnxruntime", choices=["openvino", "onnxruntime", "tensorrt"])
    args = ap.parse_args()

    decoder = ServerDecoder.open(args.bundle, backend=args.backend, top_k=3)
    for path in args.payloads:
        try:
            prediction = decoder.decode(Path(path).read_bytes())
        except BitstreamError as exc:  # truncated, corrupted, or made for another bundle
            print(f"{path}: rejected: {exc}")
            continue
        best = ", ".join(f"{label} {p:.2f}" for label, p in zip(prediction.classes, prediction.probs))
        print(f"{path}: {best}")


if __name__ == "__main__":
    main()
