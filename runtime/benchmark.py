"""``edgesplit benchmark BUNDLE``: latency percentiles and throughput of the deployed path, per backend x threads x
batch; with ``data``, top-1 and mean payload bytes on real images. Torch-free.

What is timed is what an application calls: a split bundle runs ``DeviceEncoder.encode_batch`` (preprocessing,
encoder graph, entropy coding) then ``ServerDecoder.decode_batch`` (checks, entropy decoding, decoder graph); a full
bundle runs ``DeviceModel.predict_batch``. Images are decoded into memory first, so file reading is not timed.
``latency`` mode makes one call at a time; ``throughput`` mode keeps ``streams`` callers busy at once, each with its
own sessions, and reports images per second over the whole run.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgesplit._checks import positive_int
from edgesplit.errors import ConfigError, DataError
from edgesplit.predict import list_images
from edgesplit.preprocess import load_image

from .device import DeviceEncoder, DeviceModel, as_bundle
from .server import ServerDecoder

__all__ = ["MODES", "benchmark_bundle", "format_benchmark"]

MODES = ("latency", "throughput")
MAX_DATA_IMAGES = 256


def _pipeline(bundle: Any, backend: str, device: str, threads: int | None) -> tuple[Callable[[list], Any], list]:
    """(run(images) -> (predicted indices, payload sizes), closers) for one set of sessions."""
    if bundle.kind == "split":
        enc = DeviceEncoder.open(bundle, backend=backend, device=device, threads=threads)
        dec = ServerDecoder.open(bundle, backend=backend, device=device, threads=threads, top_k=1)

        def run_split(images: list) -> tuple[list[int], list[int]]:
            payloads = enc.encode_batch(images)
            return [p.indices[0] for p in dec.decode_batch(payloads)], [len(p) for p in payloads]

        return run_split, [enc, dec]
    model = DeviceModel.open(bundle, backend=backend, device=device, threads=threads, top_k=1)

    def run_full(images: list) -> tuple[list[int], list[int]]:
        return [p.indices[0] for p in model.predict_batch(images)], []

    return run_full, [model]


def _inputs(bundle: Any, data: str | Path | None, seed: int = 0) -> tuple[list[np.ndarray], list[int | None], str]:
    """Decoded images (uint8 HxWx3) with their class index where the folder names one, and a description."""
    spec = bundle.preprocess
    if data is None:
        rng = np.random.default_rng(seed)
        side = max(spec.resize, spec.size)
        images = [rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8) for _ in range(8)]
        return images, [None] * len(images), f"8 synthetic {side}x{side} images"
    root, paths = list_images(data)
    if len(paths) > MAX_DATA_IMAGES:
        keep = np.sort(np.random.default_rng(seed).permutation(len(paths))[:MAX_DATA_IMAGES])
        paths = [paths[int(i)] for i in keep]
    index = {label: i for i, label in enumerate(bundle.labels)}
    labels = [index.get(p.parent.name) if p.parent != root else None for p in paths]
    images = [np.asarray(load_image(p)) for p in paths]
    labelled = sum(v is not None for v in labels)
    return images, labels, f"{len(images)} images from {data} ({labelled} with a class folder named like a label)"


def _stats(times_ms: Sequence[float], images: int, wall_s: float) -> dict[str, Any]:
    t = np.asarray(times_ms)
    return {"calls": int(t.size), "images": images, "mean_ms": float(t.mean()),
            "p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "images_per_s": images / wall_s if wall_s > 0 else 0.0}


def _batch_of(images: list[np.ndarray], start: int, batch: int) -> list[np.ndarray]:
    return [images[(start + i) % len(images)] for i in range(batch)]


def _measure(bundle: Any, backend: str, device: str, threads: int | None, batch: int, mode: str, streams: int,
             images: list[np.ndarray], seconds: float, warmup: int, min_calls: int) -> dict[str, Any]:
    callers = [_pipeline(bundle, backend, device, threads) for _ in range(streams if mode == "throughput" else 1)]
    try:
        for run, _ in callers:
            for w in range(warmup):
                run(_batch_of(images, w * batch, batch))
        per_caller: list[list[float]] = [[] for _ in callers]
        stop = threading.Event()

        def loop(k: int) -> None:
            run, times = callers[k][0], per_caller[k]
            start = time.perf_counter()
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                run(_batch_of(images, (i + k) * batch, batch))
                times.append((time.perf_counter() - t0) * 1e3)
                i += 1
                if len(times) >= min_calls and time.perf_counter() - start >= seconds:
                    break

        t_start = time.perf_counter()
        if len(callers) == 1:
            loop(0)
        else:
            workers = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(len(callers))]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        wall = time.perf_counter() - t_start
        all_times = [t for times in per_caller for t in times]
        row = {"backend": backend, "threads": threads, "batch": batch, "mode": mode,
               "streams": len(callers), **_stats(all_times, len(all_times) * batch, wall)}
        session = callers[0][1][0]
        row["device"], row["threads_used"] = session.device, session.threads
        return row
    finally:
        for _, closers in callers:
            for c in closers:
                c.close()


def _accuracy(bundle: Any, backend: str, device: str, threads: int | None, images: list[np.ndarray],
              labels: list[int | None]) -> dict[str, Any]:
    run, closers = _pipeline(bundle, backend, device, threads)
    try:
        predicted, sizes = [], []
        for s in range(0, len(images), 32):
            p, b = run(images[s:s + 32])
            predicted += p
            sizes += b
    finally:
        for c in closers:
            c.close()
    pairs = [(p, y) for p, y in zip(predicted, labels) if y is not None]
    out: dict[str, Any] = {"backend": backend, "images": len(images), "labelled": len(pairs),
                           "top1": (sum(p == y for p, y in pairs) / len(pairs)) if pairs else None}
    if sizes:
        out["mean_payload_bytes"] = float(np.mean(sizes))
    return out


def benchmark_bundle(bundle_dir: str | Path, *, backends: Sequence[str] = ("onnxruntime",),
                     threads: Sequence[int | None] = (None,), batches: Sequence[int] = (1,), mode: str = "latency",
                     streams: int | None = None, data: str | Path | None = None, device: str = "cpu",
                     seconds: float = 2.0, warmup: int = 2, min_calls: int = 5) -> dict[str, Any]:
    """One row per backend x threads x batch (``calls, images, mean/p50/p90/p99 ms per call, images_per_s``), and
    with ``data`` one accuracy row per backend (``top1``, ``mean_payload_bytes`` for split bundles)."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose {' or '.join(MODES)}")
    for name, values in (("batch", batches), ("threads", [t for t in threads if t is not None])):
        for value in values:
            positive_int(value, f"{name} value")
    if not backends or not batches or not threads:
        raise ConfigError("benchmark needs at least one backend, one thread count and one batch size")
    if seconds <= 0:
        raise ConfigError(f"seconds must be positive, got {seconds}")
    streams = streams if streams is not None else max(2, min(4, (os.cpu_count() or 2) // 2))
    if streams < 1:
        raise ConfigError(f"streams must be at least 1, got {streams}")
    bundle = as_bundle(bundle_dir)
    images, labels, described = _inputs(bundle, data)
    if not images:
        raise DataError(f"{data}: no images to benchmark with")
    rows = [_measure(bundle, b, device, t, n, mode, streams, images, seconds, warmup, min_calls)
            for b in backends for t in threads for n in batches]
    result: dict[str, Any] = {"bundle": str(bundle.path), "name": bundle.manifest.get("name"), "kind": bundle.kind,
                              "fingerprint": bundle.manifest["fingerprint"], "mode": mode, "inputs": described,
                              "cpu_count": os.cpu_count(), "rows": rows}
    if data is not None:
        result["accuracy"] = [_accuracy(bundle, b, device, threads[0], images, labels) for b in backends]
    return result


def format_benchmark(result: dict[str, Any]) -> str:
    """The rows as a fixed-width table, then the accuracy rows."""
    head = ("backend", "device", "threads", "batch", "streams", "calls", "p50 ms", "p90 ms", "p99 ms", "images/s")
    lines = [head]
    for r in result["rows"]:
        used = r["threads_used"] if r.get("threads_used") is not None else "default"
        lines.append((r["backend"], str(r["device"]), str(r["threads"] or f"({used})"), str(r["batch"]),
                      str(r["streams"]), str(r["calls"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['images_per_s']:.1f}"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = [f"{result['name']} ({result['kind']} bundle, {result['fingerprint']}), {result['mode']} mode, "
           f"{result['inputs']}"]
    out += ["  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in lines]
    out.insert(2, "  ".join("-" * w for w in widths))
    what = ("encode_batch + decode_batch" if result["kind"] == "split" else "predict_batch")
    out.append(f"per call: {what} of `batch` images (preprocessing included); p50/p90/p99: latency percentiles")
    for a in result.get("accuracy", []):
        top1 = "n/a (no class folders named like the labels)" if a["top1"] is None else \
            f"{100 * a['top1']:.1f}% on {a['labelled']} labelled images"
        size = f", mean payload {a['mean_payload_bytes']:.0f} B" if "mean_payload_bytes" in a else ""
        out.append(f"{a['backend']}: top-1 {top1}{size}")
    return "\n".join(out)
