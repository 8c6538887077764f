"""``edgesplit demo``: the main job end to end, from the committed weights or your own bundle (the steps:
``edgesplit.apps.cli.DESCRIPTION``; the command is registered there, so building the CLI imports none of this)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgesplit.data import IMAGE_EXTENSIONS
from edgesplit.errors import ConfigError, DataError

__all__ = ["run_command", "run_demo", "run_codec_demo", "DEMO_FILE", "LABEL_NAMES_FILE"]

REPO = Path(__file__).resolve().parents[1]
DEMO_FILE = REPO / "samples" / "weights" / "demo.yaml"
LABEL_NAMES_FILE = REPO / "samples" / "labels.yaml"
JPEG_QUALITIES = (1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WRONG = "x"  # the mark of a wrong answer in the table's "wrong" column


def run_codec_demo(seed: int = 0) -> dict[str, float]:
    """Code a 24x16x16 Laplace-distributed latent and check the round trip is bit-exact."""
    from edgesplit import bitstream
    from edgesplit.codec import FactorizedCodec, discretized_laplace_pmfs

    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=24))
    pmfs, offsets = discretized_laplace_pmfs(scales, half_width=24)
    codec = FactorizedCodec(pmfs, offsets)
    symbols = np.round(rng.laplace(0.0, scales[:, None, None], size=(24, 16, 16))).astype(np.int32)
    payload = bitstream.encode_payload(codec, symbols, fingerprint=bytes(8))
    decoded = bitstream.decode_payload(codec, payload, fingerprint=bytes(8), shape=symbols.shape)
    if not np.array_equal(decoded, symbols):
        raise RuntimeError("codec round trip was not bit-exact")  # a bug, not user error
    return {"symbols": float(symbols.size), "payload_bytes": float(len(payload)),
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

    from edgesplit.train import to_input
    from edgesplit.train.evaluate import compress_image

    with torch.no_grad():
        want = int(teacher(to_input(np.array(crop)[None], spec)).argmax(1))  # a writable copy for torch
        decoded = [compress_image(crop, "jpeg", q) for q in JPEG_QUALITIES]
        preds = teacher(to_input(np.stack([d for d, _ in decoded]), spec)).argmax(1).tolist()
    for q, (_, size), pred in zip(JPEG_QUALITIES, decoded, preds):
        if pred == want:
            return size, q
    return decoded[-1][1], JPEG_QUALITIES[-1]


def _names_file() -> dict[str, str] | None:
    """samples/labels.yaml: the display names the demo exports the committed Imagenette models with."""
    if not LABEL_NAMES_FILE.is_file():
        return None
    from edgesplit.labels import read_label_names

    return read_label_names(LABEL_NAMES_FILE)


def _display_names(bundle: Any) -> dict[str, str]:
    """id -> display name: the bundle's own names, else samples/labels.yaml when it names every label."""
    if "label_names" in bundle.manifest:
        return dict(zip(bundle.labels, bundle.label_names))
    names = _names_file() or {}
    return names if set(bundle.labels) <= set(names) else {}


def _val_top1(checkpoint: Path) -> tuple[float, int] | None:
    """(validation top-1, validation images) recorded in a checkpoint by training."""
    from edgesplit.train import read_metadata

    metrics = read_metadata(checkpoint).get("metrics") or {}
    if metrics.get("val_top1") is None:
        return None
    return float(metrics["val_top1"]), int(metrics.get("val_images") or 0)


def _split_part(bundle: Any, images: list[tuple[Path, str | None]], root: Path, teacher: Any, names: dict[str, str],
                device_backend: str, server_backend: str, say: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import httpx

    from edgesplit.preprocess import eval_crop
    from edgesplit.runtime import DeviceEncoder, ServerDecoder
    from edgesplit.runtime.service import BackgroundServer, create_app

    show = lambda label: names.get(label, label) if label is not None else "-"  # noqa: E731
    file_w = max(len(str(p.relative_to(root))) for p, _ in images)
    name_w = max(12, *(len(show(label)) for label in bundle.labels))
    rows: list[dict[str, Any]] = []
    with DeviceEncoder.open(bundle, backend=device_backend) as encoder, \
            ServerDecoder.open(bundle, backend=server_backend, top_k=3) as decoder, \
            ServerDecoder.open(bundle, backend=server_backend, top_k=3) as reference, \
            BackgroundServer(create_app(decoder)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        say(f"server-side decoder ({server_backend}) listening on {server.url}; device encoder: {device_backend}")
        if teacher is not None:
            say("JPEG@iso: bytes of the smallest JPEG of the same crop on which the teacher gives the answer it gives "
                "on the uncompressed crop (what sending the image would cost)")
        say(f"{'file':<{file_w}}  {'true label':<{name_w}}  {'prediction':<{name_w}}  {'wrong':<5} {'prob':>5} "
            f"{'bytes':>6} "
            f"{'JPEG@iso':>8} {'device ms':>9} {'server ms':>9}")
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
            jpeg_bytes, jpeg_q = (None, None)
            if teacher is not None:
                jpeg_bytes, jpeg_q = _jpeg_bytes_for_same_answer(teacher, eval_crop(path, bundle.preprocess),
                                                                 bundle.preprocess)
            correct = None if label is None else answer["classes"][0] == label
            row = {"file": str(path.relative_to(root)), "label": label, "prediction": answer["classes"][0],
                   "prediction_name": show(answer["classes"][0]), "label_name": None if label is None else show(label),
                   "prob": float(answer["probs"][0]), "payload_bytes": len(payload), "jpeg_iso_bytes": jpeg_bytes,
                   "jpeg_quality": jpeg_q, "device_ms": round(device_ms, 2), "server_ms": round(server_ms, 2),
                   "matches_in_process": list(answer["classes"]) == list(local.classes)
                   and bool(np.allclose(answer["probs"], local.probs, atol=1e-6)),
                   "correct": correct}
            rows.append(row)
            mark = WRONG if correct is False else ""
            jpeg = "n/a" if jpeg_bytes is None else str(jpeg_bytes)
            say(f"{row['file']:<{file_w}}  {show(label):<{name_w}}  {row['prediction_name']:<{name_w}}  {mark:^5} "
                f"{row['prob']:>5.2f} {row['payload_bytes']:>6} {jpeg:>8} {row['device_ms']:>9.1f} "
                f"{row['server_ms']:>9.1f}")
    labelled = [r for r in rows if r["correct"] is not None]
    mean_bytes = sum(r["payload_bytes"] for r in rows) / len(rows)
    summary: dict[str, Any] = {
        "images": len(rows), "mean_payload_bytes": mean_bytes,
        "accuracy": (sum(r["correct"] for r in labelled) / len(labelled)) if labelled else None,
        "all_match_in_process": all(r["matches_in_process"] for r in rows)}
    acc = "n/a (no class folders)" if summary["accuracy"] is None else f"{summary['accuracy'] * 100:.1f}%"
    if teacher is not None:
        mean_jpeg = sum(r["jpeg_iso_bytes"] for r in rows) / len(rows)
        summary.update(mean_jpeg_iso_bytes=mean_jpeg, bytes_saved_vs_jpeg=1.0 - mean_bytes / mean_jpeg)
        versus = (f" vs JPEG at iso-accuracy {mean_jpeg:.0f} B ({summary['bytes_saved_vs_jpeg'] * 100:.1f}% fewer "
                  "bytes)")
    else:
        versus = ""
    say(f"summary: {len(rows)} images, mean payload {mean_bytes:.0f} B{versus}, accuracy {acc}, "
        f"HTTP answers equal in-process decoding: {summary['all_match_in_process']}")
    return rows, summary


def _full_part(bundle: Any, images: list[tuple[Path, str | None]], say: Any) -> dict[str, Any]:
    from edgesplit.runtime import DeviceModel

    precision = str(bundle.manifest.get("precision", "fp32"))
    correct, labelled, times = 0, 0, []
    with DeviceModel.open(bundle, backend="openvino", top_k=1) as model:
        if bundle.manifest.get("binary_layers"):  # a binary student: its 1-bit layers run as BinaryConvolution
            n = model.session.info().get("binary_convolutions")
            precision = f"1-bit ({n} of {bundle.manifest['binary_layers']} binary layers as BinaryConvolution)"
        for path, label in images:
            t0 = time.perf_counter()
            pred = model.predict(path)
            times.append((time.perf_counter() - t0) * 1e3)
            if label is not None:
                labelled += 1
                correct += int(pred.classes[0] == label)
    full = {"bundle": str(bundle.path), "precision": precision,
            "accuracy": correct / labelled if labelled else None, "median_ms": float(np.median(times))}
    full_acc = "n/a" if full["accuracy"] is None else f"{full['accuracy'] * 100:.1f}%"
    say(f"{precision} full student on the device (DeviceModel, openvino): accuracy {full_acc}, "
        f"median {full['median_ms']:.1f} ms/image")
    return full


def run_demo(images_dir: Path, *, device_backend: str = "openvino", server_backend: str = "onnxruntime",
             keep: Path | None = None, bundle: Path | None = None, out: Any = sys.stdout) -> dict[str, Any]:
    """The whole demo; returns the rows and the summary it printed. ``keep``: export the bundles there and keep
    them; ``bundle``: run on this bundle instead of exporting the committed weights (a split bundle runs the HTTP
    part, a full bundle the device part)."""
    from edgesplit.export import export_checkpoint
    from edgesplit.runtime.device import as_bundle
    from edgesplit.train import load

    for name in ("httpx", "edgesplit.runtime.service"):  # one line per request or start would split the table
        logging.getLogger(name).setLevel(logging.WARNING)
    t_start = time.perf_counter()
    say = lambda line: print(line, file=out, flush=True)  # noqa: E731
    images = _images(images_dir)
    labelled_dir = images[0][1] is not None
    spec: dict[str, Any] = {}
    if bundle is None or keep is not None:
        spec = yaml.safe_load(DEMO_FILE.read_text()) if DEMO_FILE.is_file() else {}
        if not spec:
            raise ConfigError(f"{DEMO_FILE} is missing: no committed weights to run the demo with "
                              "(pass --bundle B to run on your own bundle)")
    if keep is not None and bundle is not None:
        raise ConfigError("--keep keeps the bundles the demo exports; with --bundle nothing is exported")
    if keep is not None and Path(keep).exists() and any(Path(keep).iterdir()):
        raise ConfigError(f"--keep {keep} exists and is not empty; choose a new directory")

    result: dict[str, Any] = {"rows": [], "summary": {}, "full_student": None}
    with tempfile.TemporaryDirectory(prefix="edgesplit-demo-") as tmp:
        work = Path(keep) if keep is not None else Path(tmp)
        own = as_bundle(bundle) if bundle is not None else None
        teacher = None
        if own is None or own.kind == "split":
            if own is None:
                split_ckpt = _weights(spec, "split_student")
                say(f"exporting {split_ckpt.name} (ONNX + OpenVINO) ...")
                split = export_checkpoint(split_ckpt, work / "split", backends=("onnxruntime", "openvino"),
                                          calib=images_dir if labelled_dir else None, calib_images=8,
                                          progress=lambda s: say(f"  {s}"), label_names=_names_file())
            else:
                split = own
                say(f"running your split bundle {split.path} ({split.manifest.get('name', 'unnamed')})")
            teacher_ckpt = DEMO_FILE.parent / "teacher_resnet18.safetensors"
            if DEMO_FILE.is_file():
                teacher_ckpt = _weights(yaml.safe_load(DEMO_FILE.read_text()), "teacher")
            if teacher_ckpt.is_file():
                candidate = load(teacher_ckpt)
                if list(candidate.edgesplit_info["labels"]) == split.labels:  # the JPEG baseline needs its labels
                    teacher = candidate
            rows, summary = _split_part(split, images, images_dir, teacher, _display_names(split), device_backend,
                                        server_backend, say)
            result.update(rows=rows, summary=summary)

        if own is not None and own.kind == "full":
            result["full_student"] = _full_part(own, images, say)
        elif own is None and "full_student" in spec:
            full_ckpt = _weights(spec, "full_student")
            precision = spec.get("full_student_precision", "int8")
            say(f"exporting full student {full_ckpt.name} at {precision} (OpenVINO) ...")
            fb = export_checkpoint(full_ckpt, work / "full", backends=("openvino",), precision=precision,
                                   calib=images_dir if labelled_dir else None, calib_images=len(images),
                                   progress=lambda s: say(f"  {s}"), label_names=_names_file())
            result["full_student"] = full = _full_part(fb, images, say)
            full["checkpoint"] = full_ckpt.name
            split_val, full_val = _val_top1(_weights(spec, "split_student")), _val_top1(full_ckpt)
            if split_val is not None and full_val is not None:
                say(f"(the full student is another, smaller model: {100 * full_val[0]:.1f}% top-1 on its "
                    f"{full_val[1]}-image validation subset vs the split student's {100 * split_val[0]:.1f}%; on "
                    f"{len(images)} images one answer is {100 / len(images):.0f} points)")
        if keep is not None:
            say(f"bundles kept in {work}: try `edgesplit predict {work / 'split'} {images_dir}` or "
                f"`edgesplit info {work / 'split'}`")
    result["summary"]["seconds"] = round(time.perf_counter() - t_start, 1)
    return result


def run_command(args: argparse.Namespace) -> int:
    """``edgesplit demo`` with the parsed arguments (``edgesplit.apps.cli`` registers the command)."""
    images = Path(args.images) if args.images else REPO / "samples" / "images"
    result = run_demo(images, device_backend=args.device_backend, server_backend=args.server_backend,
                      keep=Path(args.keep) if args.keep else None, bundle=Path(args.bundle) if args.bundle else None)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
