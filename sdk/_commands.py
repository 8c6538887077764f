"""``edgesplit predict``, ``info``, ``benchmark`` and ``schema``: the everyday commands on a checkpoint or bundle.

Registered into the main parser; each command imports the runtime or torch only when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._arguments import positive_int
from .errors import ConfigError

__all__ = ["register_cli"]


def _int_list(value: str) -> list[int]:
    return [positive_int(v.strip()) for v in value.split(",") if v.strip()]


def _names(args: argparse.Namespace) -> dict[str, str] | None:
    if not getattr(args, "label_names", None):
        return None
    from .labels import read_label_names

    return read_label_names(args.label_names)


def _is_bundle(target: Path) -> bool:
    if target.is_dir():
        return True
    if not target.is_file():
        raise ConfigError(f"{target}: no such checkpoint file or bundle directory")
    return False


def run_directory(out: str | Path, *, resume: bool = False) -> Path:
    """``out``, or when it already holds files (and this is not a resume) the first free ``out-2``, ``out-3``, ...,
    so a second run never mixes its files into the first one's."""
    import os

    path = Path(out)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return path  # torchrun: every rank must agree on one directory, so it is used as given
    if resume or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return path
    if not path.is_dir():
        raise ConfigError(f"--out {path} is a file; name a run directory")
    n = 2
    while (candidate := path.with_name(f"{path.name}-{n}")).exists():
        n += 1
    print(f"run directory: {candidate} ({path} already holds a run; --resume continues that one)", file=sys.stderr,
          flush=True)
    return candidate


def _cmd_schema(args: argparse.Namespace) -> int:
    from .config import schema_markdown

    print("# Training recipe keys\n\nGenerated from the typed recipe (`edgesplit.config.TrainConfig`); "
          "`edgesplit train RECIPE --set KEY=VALUE` takes the same keys.\n")
    print(schema_markdown())
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import format_rows, list_images

    target = Path(args.target)
    root, images = list_images(args.images)
    names = _names(args)
    if _is_bundle(target):
        from .runtime.predict import predict_bundle

        result = predict_bundle(target, images, root=root, top_k=args.top_k, backend=args.backend,
                                device=args.device, threads=args.threads, names=names)
    else:
        from .train.predict import predict_checkpoint

        result = predict_checkpoint(target, images, root=root, top_k=args.top_k, names=names)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_rows(result["rows"]))
    sizes = [r["payload_bytes"] for r in result["rows"] if r.get("payload_bytes") is not None]
    tail = f"; mean payload {sum(sizes) / len(sizes):.0f} B" if sizes else ""
    print(f"{len(result['rows'])} image(s), {result['kind']} model, {result['backend']} on {result['device']}{tail}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import describe, format_info

    target = Path(args.target)
    info = describe(target)
    if info["type"] == "checkpoint" and info["role"] == "backbone" and not args.no_cuts:
        from .train.cuts import cut_table

        cuts = cut_table(target)
        if cuts:
            info["cuts"] = cuts
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .runtime.benchmark import benchmark_bundle, format_benchmark

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it or choose another file")
    result = benchmark_bundle(args.bundle, backends=[b.strip() for b in args.backend.split(",") if b.strip()],
                              threads=args.threads or [None], batches=args.batch or [1], mode=args.mode,
                              streams=args.streams, data=args.data, device=args.device, seconds=args.seconds)
    print(json.dumps(result, indent=2) if args.json else format_benchmark(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    from .runtime._backend_names import BACKENDS  # names only: imports nothing

    sp = sub.add_parser("predict", help="top-k classes of images with a checkpoint or a bundle",
                        description="One row per image: the top-k class names with their probabilities. A split "
                                    "model goes image -> payload bytes -> prediction in this process and shows the "
                                    "payload size.")
    sp.add_argument("target", help="checkpoint (.safetensors) or bundle directory")
    sp.add_argument("images", help="an image file, or a directory of images (sub-folders included)")
    sp.add_argument("--top-k", type=positive_int, default=3, help="classes per image (default 3)")
    sp.add_argument("--backend", default="onnxruntime", help=f"bundles: {', '.join(BACKENDS)}")
    sp.add_argument("--device", default="cpu", help="bundles: e.g. cpu, cuda:0 (onnxruntime/tensorrt), gpu (openvino)")
    sp.add_argument("--threads", type=positive_int, help="bundles: intra-op threads of the backend")
    sp.add_argument("--label-names", metavar="FILE",
                    help="YAML mapping of class id to display name (overrides the names the model carries)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=_cmd_predict)

    sp = sub.add_parser("info", help="what a bundle or checkpoint is: labels, input, latent, parts, sizes, parity",
                        description="Kind, labels and names, input size and preprocessing, latent shape, parts and "
                                    "backends with file sizes, parity figures from the export report, the teacher "
                                    "hash of a student; for a teacher, the possible cut points with device-side "
                                    "MACs and latent size.")
    sp.add_argument("target", help="bundle directory or checkpoint (.safetensors)")
    sp.add_argument("--no-cuts", action="store_true", help="teachers: skip the cut-point table (needs torch)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=_cmd_info)

    sp = sub.add_parser("benchmark", help="latency percentiles and throughput of a bundle per backend x threads x "
                                          "batch (top-1 and payload bytes with --data)",
                        description="Times the deployed path (split: encode_batch + decode_batch; full: "
                                    "predict_batch) on in-memory images. Nothing is written unless --out is given, "
                                    "and an existing --out is replaced only with --overwrite.")
    sp.add_argument("bundle", help="bundle directory")
    sp.add_argument("--backend", default="onnxruntime", help=f"comma-separated: {', '.join(BACKENDS)}")
    sp.add_argument("--threads", type=_int_list, help="comma-separated intra-op thread counts (default: the runtime's)")
    sp.add_argument("--batch", type=_int_list, help="comma-separated batch sizes (default 1)")
    sp.add_argument("--mode", choices=["latency", "throughput"], default="latency",
                    help="latency: one call at a time; throughput: --streams callers at once")
    sp.add_argument("--streams", type=positive_int, help="throughput mode: concurrent callers (default 2-4)")
    sp.add_argument("--seconds", type=float, default=2.0, help="timed seconds per combination (default 2)")
    sp.add_argument("--data", help="image directory: time real images, and report top-1 (class sub-folders named "
                                   "like the labels) and mean payload bytes")
    sp.add_argument("--device", default="cpu", help="e.g. cpu, cuda:0 (onnxruntime/tensorrt), gpu (openvino)")
    sp.add_argument("--out", help="also write the JSON result to this file")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=_cmd_benchmark)

    sp = sub.add_parser("schema", help="every training recipe key with its type, default and meaning (markdown)")
    sp.set_defaults(func=_cmd_schema)
