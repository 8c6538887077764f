"""End-to-end latency model: split computing vs the whole teacher on the device vs JPEG upload to the server's teacher.

    python bench/latency.py --split-bundle SPLIT --teacher-bundle TEACHER --images samples/images --rd bench/results/rd.json

Measured on this CPU (batch 1, 2 threads, medians): device encode (preprocess + encoder graph + entropy coding) with
OpenVINO and onnxruntime, server decode, the whole teacher on the device, and the teacher on the server. Payload
bytes are real (the split's mean payload; JPEG at the quality where the teacher is within 1 point of its raw top-1,
from rd.json). Transfer time = bytes * 8 / link rate (no protocol overhead: an optimistic model for all three).
Writes bench/results/latency.json, bench/latency.png and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LINKS_MBIT = (1, 10, 100)


def _median_ms(fn, inputs, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        for x in inputs:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def jpeg_iso_bytes(rd: dict, tolerance: float = 0.01) -> tuple[float, int]:
    raw = next(p for p in rd["points"] if p["method"] == "raw")["top1"]
    ok = sorted((p["mean_bytes"], p["param"]) for p in rd["points"] if p["method"] == "jpeg" and p["top1"] >= raw - tolerance)
    if not ok:
        best = max((p for p in rd["points"] if p["method"] == "jpeg"), key=lambda p: p["top1"])
        return best["mean_bytes"], best["param"]
    return ok[0]


def main() -> int:
    from edgesplit.preprocess import eval_crop
    from edgesplit.runtime import DeviceEncoder, DeviceModel, ServerDecoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split-bundle", required=True)
    ap.add_argument("--teacher-bundle", required=True)
    ap.add_argument("--images", default=str(REPO / "samples" / "images"))
    ap.add_argument("--rd", default=str(REPO / "bench" / "results" / "rd.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latency.json"))
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out (a committed result)")
    args = ap.parse_args()
    if Path(args.out).exists() and not args.overwrite:
        ap.error(f"{args.out} exists (a committed result); pass --overwrite to replace it, or --out elsewhere")

    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    rd = json.loads(Path(args.rd).read_text())
    device: dict[str, float] = {}
    payloads: list[bytes] = []
    for backend in ("openvino", "onnxruntime"):
        enc = DeviceEncoder.open(args.split_bundle, backend=backend, threads=args.threads)
        enc.encode(images[0])  # warm-up
        device[f"split_encode_{backend}"] = _median_ms(enc.encode, images)
        payloads = [enc.encode(p) for p in images]
        teacher = DeviceModel.open(args.teacher_bundle, backend=backend, threads=args.threads)
        teacher.predict(images[0])
        device[f"teacher_{backend}"] = _median_ms(teacher.predict, images)
        enc.close()
        teacher.close()
    dec = ServerDecoder.open(args.split_bundle, backend="onnxruntime", threads=args.threads)
    dec.decode(payloads[0])
    server_decode = _median_ms(dec.decode, payloads)
    server_teacher = DeviceModel.open(args.teacher_bundle, backend="onnxruntime", threads=args.threads)
    crops = [eval_crop(p, server_teacher.bundle.preprocess) for p in images]
    server_teacher_ms = _median_ms(server_teacher.predict, crops)
    split_bytes = float(np.mean([len(p) for p in payloads]))
    jpeg_bytes, jpeg_q = jpeg_iso_bytes(rd)

    rows = []
    for mbit in LINKS_MBIT:
        tx = lambda b: b * 8 / (mbit * 1e6) * 1e3  # noqa: E731  (ms)
        rows.append({"link_mbit": mbit,
                     "split_ms": device["split_encode_openvino"] + tx(split_bytes) + server_decode,
                     "teacher_on_device_ms": device["teacher_openvino"],
                     "jpeg_upload_ms": tx(jpeg_bytes) + server_teacher_ms})
    result = {"device_ms": device, "server_decode_ms": server_decode, "server_teacher_ms": server_teacher_ms,
              "split_payload_bytes": split_bytes, "jpeg_iso_bytes": jpeg_bytes, "jpeg_quality": jpeg_q,
              "rows": rows, "threads": args.threads, "images": len(images),
              "note": "device and server run on the same 2-core x86-64 CPU here; JPEG encode time on the device is not counted",
              "command": "python bench/latency.py --split-bundle SPLIT --teacher-bundle TEACHER"}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(LINKS_MBIT))
    for i, (key, label) in enumerate([("split_ms", "split (device encoder + payload + server)"),
                                      ("teacher_on_device_ms", "whole teacher on the device"),
                                      ("jpeg_upload_ms", f"JPEG q{jpeg_q} upload + server teacher")]):
        ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], width=0.27, label=label)
    ax.set_xticks(x, [f"{m} Mbit/s" for m in LINKS_MBIT])
    ax.set_yscale("log")
    ax.set_ylabel("ms per image (log)")
    ax.legend(fontsize=8)
    ax.set_title("End-to-end latency model (batch 1, this CPU)")
    fig.tight_layout()
    fig.savefig(REPO / "bench" / "latency.png", dpi=120)

    print("| link | split (ms) | teacher on device (ms) | JPEG upload + server teacher (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['link_mbit']} Mbit/s | {r['split_ms']:.1f} | {r['teacher_on_device_ms']:.1f} | {r['jpeg_upload_ms']:.1f} |")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
