"""``edgesplit demo``: the main job end to end, from the committed weights.

Exports the split student to a bundle (ONNX + OpenVINO) in a temporary directory, serves its decoder over HTTP on
loopback, encodes each image with ``DeviceEncoder`` as a device would, sends the payloads, and compares every answer
with in-process decoding and with the JPEG bytes the teacher would need for the same answer. Then runs a compressed
full student on the device with ``DeviceModel``. Nothing is left running or written outside the temporary directory.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .data import IMAGE_EXTENSIONS
from .errors import ConfigError, DataError

__all__ = ["register_cli", "run_demo", "run_codec_demo", "DEMO_FILE"]

REPO = Path(__file__).resolve().parents[1]
DEMO_FILE = REPO / "samples" / "weights" / "demo.yaml"
JPEG_QUALITIES = (1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def run_codec_demo(seed: int = 0) -> dict[str, float]:
    """Code a 24x16x16 Laplace-distributed latent and check the round trip is bit-exact."""
    from . import bitstream
    from .codec import FactorizedCodec, discretized_laplace_pmfs

    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=24))
    pmfs, offsets = discretized_laplace_pmfs(scales, half_width=24)
    codec = FactorizedCodec(pmfs, offsets)
    symbols = np.round(rng.laplace(0.0, scales[:, None, None], size=(24, 16, 16))).astype(np.int32)
    frame = bitstream.pack(codec.encode(symbols), fingerprint=bytes(8), shape=symbols.shape, codec=codec.codec_id)
    f = bitstream.unpack(frame, expected_fingerprint=bytes(8))
    if not np.array_equal(codec.decode(f.payload, f.shape), symbols):
        raise RuntimeError("codec round trip was not bit-exact")  # a bug, not user error
    return {"symbols": float(symbols.size), "payload_bytes": float(len(frame)),
            "information_bytes": codec.information_bits(symbols) / 8}


def _images(directory: Path) -> list[tuple[Path, str | None]]:
    """Images of ``directory``: (path, label) for an ImageFolder layout, (path, None) for a flat folder."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such image directory")
    found = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            label = p.parent.name if p.parent != directory else None
            found.append((p, label))
    if not found:
        raise DataError(f"{directory}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def _weights(spec: dict[str, Any], key: str) -> Path:
    if key not in spec:
        raise ConfigError(f"{DEMO_FILE}: key {key!r} is missing")
    path = DEMO_FILE.parent / spec[key]
    if not path.is_file():
        raise ConfigError(f"{DEMO_FILE}: {key} names {path}, which does not exist")
    return path


def _jpeg_bytes_for_same_answer(teacher: Any, crop: np.ndarray, spec: Any) -> tuple[int, int]:
    """Smallest JPEG of ``crop`` (over JPEG_QUALITIES) on which the teacher answers as on the raw crop."""
    import torch

    from .train import to_input
    from .train.evaluate import compress_image

    with torch.no_grad():
        want = int(teacher(to_input(crop[None], spec)).argmax(1))
        decoded = [compress_image(crop, "jpeg", q) for q in JPEG_QUALITIES]
        preds = teacher(to_input(np.stack([d for d, _ in decoded]), spec)).argmax(1).tolist()
    for q, (_, size), pred in zip(JPEG_QUALITIES, decoded, preds):
        if pred == want:
            return size, q
    return decoded[-1][1], JPEG_QUALITIES[-1]


def run_demo(images_dir: Path, *, device_backend: str = "openvino", server_backend: str = "onnxruntime",
             out=sys.stdout) -> dict[str, Any]:
    """The whole demo; returns the rows and the summary it printed."""
    import httpx

    from .export import export_checkpoint
    from .preprocess import eval_crop
    from .runtime import DeviceEncoder, DeviceModel, ServerDecoder
    from .runtime.service import BackgroundServer, create_app
    from .train import load

    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the table
    t_start = time.perf_counter()
    spec = yaml.safe_load(DEMO_FILE.read_text()) if DEMO_FILE.is_file() else None
    if not spec:
        raise ConfigError(f"{DEMO_FILE} is missing: no committed weights to run the demo with")
    names = {}
    names_file = REPO / "samples" / "labels.yaml"
    if names_file.is_file():
        names = yaml.safe_load(names_file.read_text()) or {}
    images = _images(images_dir)
    split_ckpt, teacher_ckpt = _weights(spec, "split_student"), _weights(spec, "teacher")
    teacher = load(teacher_ckpt)
    say = lambda line: print(line, file=out, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="edgesplit-demo-") as tmp:
        say(f"exporting {split_ckpt.name} (ONNX + OpenVINO) ...")
        bundle = export_checkpoint(split_ckpt, Path(tmp) / "split", formats=("onnx", "openvino"),
                                   calib=images_dir if images[0][1] is not None else None, calib_images=8,
                                   progress=lambda s: say(f"  {s}"))
        encoder = DeviceEncoder.open(bundle, backend=device_backend)
        decoder = ServerDecoder.open(bundle, backend=server_backend, top_k=3)
        reference = ServerDecoder.open(bundle, backend=server_backend, top_k=3)
        rows = []
        with BackgroundServer(create_app(decoder)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            say(f"server-side decoder ({server_backend}) listening on {server.url}; device encoder: {device_backend}")
            header = f"{'file':<34} {'prediction':<18} {'prob':>5} {'bytes':>6} {'JPEG@iso':>8} {'device ms':>9} {'server ms':>9}"
            say(header)
            for path, label in images:
                payload = encoder.encode(path)
                device_ms = encoder.last_timings["total_ms"]
                t0 = time.perf_counter()
                resp = client.post("/v1/decode", content=payload, headers={"content-type": "application/octet-stream"})
                server_ms = (time.perf_counter() - t0) * 1e3
                if resp.status_code != 200:
                    raise DataError(f"{path}: the server answered {resp.status_code}: {resp.text}")
                answer = resp.json()
                local = reference.decode(payload)
                crop = eval_crop(path, bundle.preprocess)
                jpeg_bytes, jpeg_q = _jpeg_bytes_for_same_answer(teacher, crop, bundle.preprocess)
                row = {"file": str(path.relative_to(images_dir)), "label": label, "prediction": answer["labels"][0],
                       "prob": float(answer["probs"][0]), "payload_bytes": len(payload), "jpeg_iso_bytes": jpeg_bytes,
                       "jpeg_quality": jpeg_q, "device_ms": round(device_ms, 2), "server_ms": round(server_ms, 2),
                       "matches_in_process": list(answer["labels"]) == list(local.labels)
                       and bool(np.allclose(answer["probs"], local.probs, atol=1e-6)),
                       "correct": None if label is None else answer["labels"][0] == label}
                rows.append(row)
                shown = names.get(row["prediction"], row["prediction"])
                say(f"{row['file'][-34:]:<34} {shown[:18]:<18} {row['prob']:>5.2f} {row['payload_bytes']:>6} "
                    f"{jpeg_bytes:>8} {row['device_ms']:>9.1f} {row['server_ms']:>9.1f}")
        labelled = [r for r in rows if r["correct"] is not None]
        mean_bytes = sum(r["payload_bytes"] for r in rows) / len(rows)
        mean_jpeg = sum(r["jpeg_iso_bytes"] for r in rows) / len(rows)
        summary = {"images": len(rows), "mean_payload_bytes": mean_bytes, "mean_jpeg_iso_bytes": mean_jpeg,
                   "accuracy": (sum(r["correct"] for r in labelled) / len(labelled)) if labelled else None,
                   "bytes_saved_vs_jpeg": 1.0 - mean_bytes / mean_jpeg,
                   "all_match_in_process": all(r["matches_in_process"] for r in rows)}
        acc = "n/a (no labels)" if summary["accuracy"] is None else f"{summary['accuracy'] * 100:.1f}%"
        say(f"summary: {len(rows)} images, mean payload {mean_bytes:.0f} B vs JPEG at iso-accuracy {mean_jpeg:.0f} B "
            f"({summary['bytes_saved_vs_jpeg'] * 100:.1f}% fewer bytes), accuracy {acc}, "
            f"HTTP answers equal in-process decoding: {summary['all_match_in_process']}")

        full = None
        if "full_student" in spec:
            full_ckpt = _weights(spec, "full_student")
            precision = spec.get("full_student_precision", "int8")
            say(f"exporting full student {full_ckpt.name} at {precision} (OpenVINO) ...")
            fb = export_checkpoint(full_ckpt, Path(tmp) / "full", formats=("openvino",), precision=precision,
                                   calib=images_dir if images[0][1] is not None else None, calib_images=len(images),
                                   progress=lambda s: say(f"  {s}"))
            model = DeviceModel.open(fb, backend="openvino", top_k=1)
            if fb.manifest.get("binary_layers"):  # a binary student: its 1-bit layers run as BinaryConvolution
                n = model.session.info().get("binary_convolutions")
                precision = f"1-bit ({n} of {fb.manifest['binary_layers']} binary layers as BinaryConvolution)"
            correct, times = 0, []
            for path, label in images:
                t0 = time.perf_counter()
                pred = model.predict(path)
                times.append((time.perf_counter() - t0) * 1e3)
                correct += int(label is not None and pred.labels[0] == label)
            full = {"checkpoint": full_ckpt.name, "precision": precision, "accuracy": correct / len(labelled) if labelled else None,
                    "median_ms": float(np.median(times))}
            full_acc = "n/a" if full["accuracy"] is None else f"{full['accuracy'] * 100:.1f}%"
            say(f"{precision} full student on the device (DeviceModel, openvino): accuracy {full_acc}, "
                f"median {full['median_ms']:.1f} ms/image")
        for closer in (encoder, decoder, reference):
            closer.close()
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    return {"rows": rows, "summary": summary, "full_student": full}


def _cmd_demo(args: argparse.Namespace) -> int:
    images = Path(args.images) if args.images else REPO / "samples" / "images"
    result = run_demo(images, device_backend=args.device_backend, server_backend=args.server_backend)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("demo", help="the main job end to end: device encoder -> bytes over HTTP -> server decoder",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--images", help="your own images: a folder of images, or class sub-folders named like the "
                    "model's labels for an accuracy figure (default: samples/images)")
    sp.add_argument("--device-backend", default="openvino", choices=["openvino", "onnxruntime"])
    sp.add_argument("--server-backend", default="onnxruntime", choices=["openvino", "onnxruntime"])
    sp.add_argument("--json", help="also write the rows and summary to this JSON file")
    sp.set_defaults(func=_cmd_demo)
