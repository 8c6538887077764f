"""``edgesplit export``: a checkpoint -> a verified deployment bundle (registered into the main CLI; imports nothing
heavy until the command runs)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register_cli"]


def _cmd_export(args: argparse.Namespace) -> int:
    from . import REPORT_FILE, export_checkpoint, report_table

    bundle = export_checkpoint(
        args.checkpoint, args.out, formats=args.format, precision=args.precision, calib=args.calib,
        calib_images=args.calib_images, verify=not args.no_verify, overwrite=args.overwrite,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True), name=args.name,
        threads=args.threads,
    )
    report = json.loads((bundle.path / REPORT_FILE).read_text(encoding="utf-8"))
    print(report_table(report))
    print(f"bundle: {bundle.path}  (fingerprint {bundle.manifest['fingerprint']})")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` command to the main parser's subcommands."""
    sp = subparsers.add_parser(
        "export", help="export a checkpoint to a bundle (ONNX, OpenVINO IR, TensorRT plan) and check its parity",
        description="Export a checkpoint (full model or split student) to a deployment bundle, check each graph "
                    "against torch on calibration images (batch 1 and 3), and print a table of sizes, parity and "
                    "batch-1 latency on this CPU.",
    )
    sp.add_argument("checkpoint", help="checkpoint (.safetensors) written by edgesplit train")
    sp.add_argument("--format", default="onnx,openvino",
                    help="comma-separated: onnx, openvino, tensorrt (default: onnx,openvino)")
    sp.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                    help="fp32 (default), fp16, or int8 (post-training quantization on --calib images)")
    sp.add_argument("--calib", help="ImageFolder directory of calibration/parity images (default: synthetic images)")
    sp.add_argument("--calib-images", type=int, default=64, help="how many calibration images (default 64)")
    sp.add_argument("--out", help="bundle directory (default: <checkpoint>-<precision>.bundle next to the checkpoint)")
    sp.add_argument("--name", help="bundle name in the manifest (default: the checkpoint's file name)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    sp.add_argument("--no-verify", action="store_true", help="write the bundle even if a parity check fails")
    sp.add_argument("--threads", type=int, help="CPU threads for parity and latency (default: the backends' own)")
    sp.set_defaults(func=_cmd_export)
