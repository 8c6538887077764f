"""``edgesplit export``: a checkpoint -> a verified deployment bundle (registered into the main CLI; imports nothing
heavy until the command runs)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import Any, Iterator

from edgesplit._arguments import positive_int

__all__ = ["register_cli", "DEFAULT_BACKENDS"]

DEFAULT_BACKENDS = "onnxruntime,openvino"


def _names(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    from edgesplit.labels import read_label_names

    return read_label_names(path)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler, `docker stop`) ends the export like Ctrl-C: the partial bundle is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _backends(args: argparse.Namespace) -> str:
    """``--backend``, or the deprecated ``--format`` (its values mapped to backend names, with one notice)."""
    if args.format is None:
        return args.backend or DEFAULT_BACKENDS
    if args.backend is not None:
        from edgesplit.errors import ConfigError

        raise ConfigError("edgesplit export: give --backend only (--format is its deprecated name)")
    from . import parse_backends

    backends = ",".join(parse_backends(args.format))
    print(f"edgesplit export: --format is deprecated; use --backend {backends}", file=sys.stderr)
    return backends


def _cmd_export(args: argparse.Namespace) -> int:
    from . import REPORT_FILE, export_checkpoint, report_table

    backends = _backends(args)
    with _sigterm_as_interrupt():
        bundle = export_checkpoint(
            args.checkpoint, args.out, backends=backends, precision=args.precision, calib=args.calib,
            calib_images=args.calib_images, verify=not args.no_verify, overwrite=args.overwrite,
            progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True), name=args.name,
            threads=args.threads, label_names=_names(args.label_names),
        )
    report = json.loads((bundle.path / REPORT_FILE).read_text(encoding="utf-8"))
    print(report_table(report))
    print(f"bundle: {bundle.path}  (fingerprint {bundle.manifest['fingerprint']})")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish_run

    cands = [int(v) for v in args.resize_candidates.split(",")] if args.resize_candidates else None
    results = publish_run(args.run, args.name, args.data, dest=args.dest, result=args.result,
                          resize_candidates=cands)
    for r in results:
        print(f"{r['checkpoint']}: top-1 {100 * r['top1']:.2f}% on {r['val_images']} held-out images, "
              f"{r['file_bytes'] / 1e6:.2f} MB ({r['dtype']})")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``publish`` commands to the main parser's subcommands."""
    sp = subparsers.add_parser(
        "publish", help="publish a finished run: fp16 weights, recipe and log, top-1 re-measured from the file",
        description="Write a finished run's model as DEST/NAME.safetensors (fp16; float32 for quantized and binary "
                    "students), its recipe and log beside it, and re-measure top-1 on the run's held-out validation images. A "
                    "staged run (plan.json) publishes each sweep point's last stage as NAME_<value> (or NAME with {value} "
                    "replaced; dots in the value become p).")
    sp.add_argument("run", help="run directory written by edgesplit train")
    sp.add_argument("--name", required=True, help="file stem under --dest")
    sp.add_argument("--data", required=True, help="the ImageFolder directory the run was trained on")
    sp.add_argument("--dest", default="samples/weights", help="directory for the published files")
    sp.add_argument("--result", help="also write this results JSON")
    sp.add_argument("--resize-candidates", help="comma-separated evaluation resizes to choose from on training images")
    sp.set_defaults(func=_cmd_publish)
    sp = subparsers.add_parser(
        "export", help="export a checkpoint to a bundle for runtime backends (onnxruntime, openvino, tensorrt) and check "
             "its parity",
        description="Export a checkpoint (full model or split student) to a deployment bundle, check each graph "
                    "against torch on calibration images (batch 1 and 3) through the runtime's own sessions, and print a "
                    "table of sizes, parity and batch-1 latency on this CPU.",
    )
    sp.add_argument("checkpoint", help="checkpoint (.safetensors) written by edgesplit train")
    sp.add_argument("--backend", metavar="NAMES",
                    help="comma-separated runtime backends to export for, the names eval and serve take: "
                         f"onnxruntime, openvino, tensorrt (default: {DEFAULT_BACKENDS})")
    sp.add_argument("--format", help=argparse.SUPPRESS)  # deprecated name of --backend (values onnx, openvino, ...)
    sp.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                    help="fp32 (default), fp16, or int8 (post-training quantization on --calib images)")
    sp.add_argument("--calib", help="ImageFolder directory of calibration/parity images (default: synthetic images)")
    sp.add_argument("--calib-images", type=positive_int, default=64, help="how many calibration images (default 64)")
    sp.add_argument("--out", help="bundle directory (default: <checkpoint>-<precision>.bundle next to the checkpoint)")
    sp.add_argument("--name", help="bundle name in the manifest (default: the checkpoint's file name)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    sp.add_argument("--no-verify", action="store_true", help="write the bundle even if a parity check fails")
    sp.add_argument("--threads", type=positive_int, help="CPU threads for parity and latency (default: the backends' own)")
    sp.add_argument("--label-names", metavar="FILE",
                    help="YAML mapping of class id to display name for the manifest (default: the checkpoint's names)")
    sp.set_defaults(func=_cmd_export)
