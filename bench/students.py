"""Quantized and binarized students: accuracy, size and speed per variant -> bench/results/students.json.

    python bench/students.py --data ../shared/datasets/imagenette2-160/train --subset val --threads 2

For each committed student (samples/weights/student_*.safetensors, made by configs/student_*.yaml):
  * top-1 on the held-out validation subset through ``edgesplit eval`` on the checkpoint (torch),
  * parameters, MACs at the input size, bytes on disk of the checkpoint (fp16 or packed 1-bit) and, for binary
    students, the binary layers' weight storage packed vs float32,
  * an exported bundle (fp32 for the float student, int8 from the model's own Q/DQ for the QAT students, 1-bit for
    binary students) timed at batch 1 with ``--threads`` threads on onnxruntime and OpenVINO (median of ``--runs``),
    with the bundle's bytes on disk,
  * for binary students: the whole model on OpenVINO with the 1-bit ``BinaryConvolution`` kernel against the same
    graph with dense FP32 convolutions, and the binary layers' share of each (OpenVINO's per-layer profiling).

Prints the markdown table for bench/BENCHMARKS.md; ``--table-only`` re-prints it from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgesplit._arguments import RenamedFlag

REPO = Path(__file__).resolve().parents[1]

# variant, config, estimator, weight bits (binary layers), activation bits, export precision
VARIANTS = [
    ("fp32", "student_fp32", None, 32, 32, "fp32"),
    ("int8", "student_int8", None, 8, 8, "int8"),
    ("int4", "student_int4", None, 4, 4, "int8"),
    ("binary-ste", "student_binary_ste", "ste", 1, 1, "fp32"),
    ("binary-reste", "student_binary_reste", "reste", 1, 1, "fp32"),
    ("binary-biper", "student_binary_biper", "biper", 1, 1, "fp32"),
]


def _profile_times(request: Any) -> tuple[float, float]:
    """(whole graph, binary layers) real time in ms of the request's last inference, from its per-node profile.

    A binary layer's ops carry the ``binary_unit_`` name prefix (``runtime.binary_graph``); OpenVINO keeps it on the
    1-bit graph's FakeQuantize and BinaryConvolution nodes and on the FP32 twin's comparison subgraph, but renames
    the twin's dense convolutions after the constants it folds into them. So the binary layers' time is every node
    named ``binary_unit_*`` plus every convolution that is not one of the float ``real_conv_*`` ones (stem,
    shortcuts, named the same in both graphs)."""
    from edgesplit.runtime.binary_graph import BINARY_UNIT_PREFIX, REAL_CONV_PREFIX

    t_all = t_bin = 0.0
    for info in request.profiling_info:
        ms = info.real_time.total_seconds() * 1e3
        t_all += ms
        if info.node_name.startswith(BINARY_UNIT_PREFIX) or (
                info.node_type == "Convolution" and not info.node_name.startswith(REAL_CONV_PREFIX)):
            t_bin += ms
    return t_all, t_bin


def _profile_pair(compiled: dict[str, Any], x: np.ndarray, runs: int) -> dict[str, dict[str, float]]:
    """Per-node profiles of the 1-bit graph and its FP32 twin, inferred alternately (one of each per round, so both
    see the same background load), medians over ``runs`` rounds."""
    requests = {name: c.create_infer_request() for name, c in compiled.items()}
    for _ in range(5):
        for req in requests.values():
            req.infer({0: x})
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in requests}
    for _ in range(runs):
        for name, req in requests.items():
            req.infer({0: x})
            times[name].append(_profile_times(req))
    return {name: {"total_ms": float(statistics.median(t for t, _ in ts)),
                   "binary_layers_ms": float(statistics.median(b for _, b in ts))} for name, ts in times.items()}


def binary_kernel(model: Any, size: int, threads: int, runs: int) -> dict[str, Any]:
    """The 1-bit OpenVINO graph against its dense FP32 twin (same function): whole-model median latency, the
    number of layers executed as BinaryConvolution, and the time spent in the binary layers of each."""
    import torch  # noqa: F401  (the lowering reads the torch model)

    from edgesplit.export.openvino_binary import (binary_layer_types, build_openvino_model, compile_model,
                                                          time_compiled)

    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    out: dict[str, Any] = {}
    compiled, profiled = {}, {}
    for name, binary in (("binary", True), ("fp32", False)):
        ov_model = build_openvino_model(model, (1, 3, size, size), binary=binary)
        compiled[name] = compile_model(ov_model, config={"INFERENCE_NUM_THREADS": threads})
        out[f"{name}_ms"] = time_compiled(compiled[name], x, runs=runs, warmup=10)["median_ms"]
        profiled[name] = compile_model(ov_model, config={"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    for name, prof in _profile_pair(profiled, x, max(100, runs)).items():
        out[f"{name}_profile"] = prof
    types = binary_layer_types(compiled["binary"])
    out["binary_convolutions"] = types.get("BinaryConvolution", 0)
    out["dense_convolutions_in_binary_graph"] = types.get("Convolution", 0)
    with_torch = model(torch.from_numpy(x)).detach().numpy()
    for name in ("binary", "fp32"):
        req = compiled[name].create_infer_request()
        got = np.array(req.infer({0: x})[compiled[name].outputs[0]])
        out[f"{name}_max_abs_vs_torch"] = float(np.abs(got - with_torch).max())
    bp, fp = out["binary_profile"], out["fp32_profile"]
    out["binary_layers_ms"] = {"binary": bp["binary_layers_ms"], "fp32": fp["binary_layers_ms"]}
    out["speedup_whole_model"] = out["fp32_ms"] / out["binary_ms"]
    b = out["binary_layers_ms"]
    out["speedup_binary_layers"] = b["fp32"] / b["binary"] if b["binary"] > 0 else None
    out["binary_layers_share"] = {"binary": b["binary"] / bp["total_ms"], "fp32": b["fp32"] / fp["total_ms"]}
    return out


def measure(variant: tuple, data: str, subset: str, threads: int, runs: int, calib: str, limit: int | None
            ) -> dict[str, Any]:
    import torch

    from edgesplit.export import export_checkpoint
    from edgesplit.export._parity import median_latency_ms
    from edgesplit.plugins.backbones import count_macs
    from edgesplit.plugins.quant.binary import binary_layers
    from edgesplit.runtime.backends import open_part
    from edgesplit.train import load
    from edgesplit.train.evaluate import evaluate_checkpoint

    name, config, estimator, wbits, abits, precision = variant
    ckpt = REPO / "samples/weights" / f"{config}.safetensors"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: missing; train configs/{config}.yaml and publish it first")
    model = load(ckpt)
    info = model.edgesplit_info
    size = int(info["preprocess"]["size"])
    entry: dict[str, Any] = {
        "variant": name, "estimator": estimator, "weight_bits": wbits, "activation_bits": abits,
        "checkpoint": str(ckpt.relative_to(REPO)), "config": f"configs/{config}.yaml",
        "seed": info.get("train_config", {}).get("seed"),
        "params": int(sum(p.numel() for p in model.parameters())),
        "macs": int(count_macs(model, torch.zeros(1, 3, size, size))),
        "checkpoint_bytes": ckpt.stat().st_size,
    }
    layers = binary_layers(model)
    if layers:
        n = sum(int(l.weight.numel()) for l in layers.values())
        packed = sum(int(v.numel() * v.element_size()) for l in layers.values() for v in l.packed().values()
                     if v.dtype != torch.int64)
        entry["binary_layers"] = {"layers": len(layers), "weights": n, "fp32_bytes": 4 * n, "packed_bytes": packed,
                                  "compression": 4 * n / packed}
    t0 = time.time()
    ev = evaluate_checkpoint(ckpt, data, subset=subset, limit=limit)
    entry.update(top1=ev["top1"], images=ev["images"], eval_s=round(time.time() - t0, 1))
    print(f"[{name}] top-1 {ev['top1']:.4f} on {ev['images']} images", flush=True)

    with tempfile.TemporaryDirectory(prefix="edgesplit-students-") as tmp:
        out = Path(tmp) / f"{name}.bundle"
        bundle = export_checkpoint(ckpt, out, backends="onnxruntime,openvino", precision=precision, calib=calib,
                                   calib_images=20, threads=threads)
        report = json.loads((out / "export_report.json").read_text())
        entry["bundle"] = {"precision": precision,
                           "bytes": {r["backend"]: r["bytes"] for r in report["rows"]},
                           "parity": {r["backend"]: r["parity"] for r in report["rows"]},
                           "notes": report.get("notes", [])}
        image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        latency = {}
        for backend in ("onnxruntime", "openvino"):
            session = open_part(bundle, "model", backend, threads=threads)
            latency[backend] = median_latency_ms(session, {"image": image}, warmup=5, runs=runs,
                                                 budget_s=float("inf"))
            del session
        entry["latency_ms_b1"] = latency
        print(f"[{name}] latency b1 x{threads} threads: " +
              ", ".join(f"{k} {v:.2f} ms" for k, v in latency.items()), flush=True)
    if layers:
        entry["openvino_1bit"] = binary_kernel(model, size, threads, runs)
        k = entry["openvino_1bit"]
        print(f"[{name}] OpenVINO 1-bit {k['binary_ms']:.2f} ms vs FP32 {k['fp32_ms']:.2f} ms "
              f"({k['binary_convolutions']} BinaryConvolution)", flush=True)
    return entry


def table(results: dict[str, Any]) -> str:
    rows = ["| variant | estimator | bits W/A | top-1 | params | MACs | checkpoint | bundle (ORT / OV) | "
            "ORT b1 | OV b1 | OV 1-bit vs FP32 (whole) | binary layers: 1-bit vs FP32 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in results["variants"]:
        k = e.get("openvino_1bit")
        whole = f"{k['binary_ms']:.2f} / {k['fp32_ms']:.2f} ms ({k['speedup_whole_model']:.2f}x)" if k else "-"
        if k and k.get("speedup_binary_layers"):
            bl = k["binary_layers_ms"]
            layers = f"{bl['binary']:.2f} / {bl['fp32']:.2f} ms ({k['speedup_binary_layers']:.2f}x)"
        else:
            layers = "-"
        b = e["bundle"]["bytes"]
        rows.append(
            f"| {e['variant']} | {e['estimator'] or '-'} | {e['weight_bits']}/{e['activation_bits']} | "
            f"{100 * e['top1']:.2f}% | {e['params'] / 1e6:.2f} M | {e['macs'] / 1e6:.1f} M | "
            f"{e['checkpoint_bytes'] / 1e6:.2f} MB | {b.get('onnxruntime', 0) / 1e6:.2f} / "
            f"{b.get('openvino', 0) / 1e6:.2f} MB | {e['latency_ms_b1']['onnxruntime']:.2f} ms | "
            f"{e['latency_ms_b1']['openvino']:.2f} ms | {whole} | {layers} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="ImageFolder the students were trained on (its held-out validation subset is used)")
    ap.add_argument("--subset", default="val", choices=["val", "all"])
    ap.add_argument("--split", dest="subset", choices=["val", "all"], action=RenamedFlag, new="--subset",
                    help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200, help="timed runs per latency (median)")
    ap.add_argument("--calib", default=str(REPO / "samples/images"), help="calibration/parity images for export")
    ap.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    ap.add_argument("--out", default=str(REPO / "bench/results/students.json"))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table_only:
        print(table(json.loads(out.read_text())))
        return 0
    if not args.data:
        ap.error("--data is required")
    wanted = args.variants.split(",")
    unknown = set(wanted) - {v[0] for v in VARIANTS}
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(v[0] for v in VARIANTS)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from edgesplit.export._report import cpu_name as _cpu_name

    previous = json.loads(out.read_text()) if out.is_file() else {"variants": []}
    kept = {e["variant"]: e for e in previous.get("variants", [])}
    for v in VARIANTS:
        if v[0] in wanted:
            kept[v[0]] = measure(v, args.data, args.subset, args.threads, args.runs, args.calib, args.limit)
    results = {
        "command": "python bench/students.py " + " ".join(sys.argv[1:]),
        "cpu": _cpu_name(), "threads": args.threads, "subset": args.subset,
        "variants": [kept[v[0]] for v in VARIANTS if v[0] in kept],
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
