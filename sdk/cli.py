"""The ``edgesplit`` command line: plugins, train, eval, export, serve, demo.

Heavy imports (torch, runtimes) happen inside each command, so ``edgesplit --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from ._arguments import RenamedFlag, positive_int
from .errors import BackendUnavailable, ConfigError, EdgesplitError

__all__ = ["main"]


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import KINDS, available, broken_plugins, unavailable_plugins

    for kind in KINDS:
        names = available(kind)
        print(f"{kind}: {', '.join(names) if names else '(none)'}")
    broken = broken_plugins()
    for b in broken:
        print(f"BROKEN plugin {b.name!r} ({b.value}, from {b.distribution}): {b.error}")
    for u in unavailable_plugins():  # a missing optional dependency, not a failure: --strict ignores it
        print(f"unavailable plugin {u.name!r} ({u.value}, from {u.distribution}): {u.hint}")
    return 1 if broken and args.strict else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ._commands import run_directory
    from .config import load_train_config_with_overrides
    from .train import train

    from .recipe import is_staged, load_recipe, parse_sweep

    raw = load_recipe(args.config, args.set or [])
    sweep = parse_sweep(args.sweep or [])
    if is_staged(raw) or sweep:  # several stages and/or sweep points: one run directory per stage
        return _train_staged(args, raw, sweep)
    cfg = load_train_config_with_overrides(args.config, args.set or [])
    names = None
    if args.label_names:
        from .labels import read_label_names

        names = read_label_names(args.label_names)  # a bad file fails before any image is decoded
    out = run_directory(args.out, resume=args.resume)
    if args.threads is not None:
        cfg.threads = args.threads
    metrics = train(cfg, out, data_root=args.data, resume=args.resume, source=args.config,
                    progress=not args.no_progress)
    if not metrics:  # a torchrun rank other than 0: rank 0 writes the run and reports it
        return 0
    if names is not None:
        from .train.checkpoint import set_label_names

        set_label_names(out / "model.safetensors", names)
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "labels"}, indent=2))
    if not args.no_report:
        from .train.report import format_summary, write_report

        summary = write_report(out, data_root=args.data)
        if not args.json:
            print(format_summary(summary))
    return 0


def _train_staged(args: argparse.Namespace, raw: dict, sweep: dict) -> int:
    from ._commands import run_directory
    from .recipe import plan_recipe
    from .train.stages import train_plan

    out = run_directory(args.out, resume=args.resume)
    plan = plan_recipe(raw, out, source=args.config, sweep=sweep)  # every stage validated before any trains
    if args.threads is not None:
        for r in plan.runs:
            r.config.threads = args.threads
    results = train_plan(plan, out, data_root=args.data, resume=args.resume, source=args.config,
                         progress=not args.no_progress)
    for r in plan.runs:
        m = results.get(str(r.out))
        if m:
            print(f"{r.config.name}: top-1 {100 * m['val_top1']:.2f}% ({r.out})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    target = Path(args.target)
    if target.is_dir():
        from .runtime.evaluate import evaluate_bundle  # bundles: the deployed path through a runtime backend

        result = evaluate_bundle(target, args.data, backend=args.backend, limit=args.limit, subset=args.subset)
    else:
        if args.quality is not None and args.input_codec is None:
            raise ConfigError("--quality needs --input-codec jpeg|webp|avif|jxl")
        low = 0 if args.input_codec in ("avif", "jxl") else 1
        if args.quality is not None and not low <= args.quality <= 100:
            raise ConfigError(f"--quality must be in {low}..100 for {args.input_codec}, got {args.quality}")
        try:
            from .train.evaluate import evaluate_checkpoint
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            raise BackendUnavailable("evaluating a checkpoint needs torch: pip install edgesplit[train] "
                                     "(or export it and evaluate the bundle directory instead)") from exc
        result = evaluate_checkpoint(target, args.data, limit=args.limit, subset=args.subset,
                                     input_codec=args.input_codec, quality=args.quality)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgesplit", description="Put vision models on edge devices.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("plugins", help="list every component kind with its components, and broken plugins")
    sp.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed to load")
    sp.set_defaults(func=_cmd_plugins)

    sp = sub.add_parser("train", help="train or distill a model from a YAML recipe")
    sp.add_argument("config", help="YAML recipe (see configs/)")
    sp.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl, metrics.json); if it holds "
                    "a run already, the next free DIR-2, DIR-3, ... is used (unless --resume)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a recipe key, validated like the file (repeatable): --set epochs=1 "
                         "--set data.limit_per_class=20 --set losses.0.weight=0.5; keys: `edgesplit schema`")
    sp.add_argument("--sweep", action="append", metavar="VAR=V1,V2",
                    help="one run per value of the recipe's vars.VAR (e.g. --sweep beta=1e-4,4e-5); stages marked "
                         "shared train once for all values")
    sp.add_argument("--data", help="ImageFolder dataset directory (overrides data.root)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    sp.add_argument("--threads", type=positive_int, help="CPU threads for torch (overrides the recipe's threads)")
    sp.add_argument("--label-names", metavar="FILE",
                    help="YAML mapping of class id to display name, stored in model.safetensors next to the ids")
    sp.add_argument("--no-report", action="store_true",
                    help="skip the report (summary, report.png, confusion matrix of the held-out validation images)")
    sp.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    sp.set_defaults(func=_cmd_train)

    sp = sub.add_parser("eval", help="top-1 (and bytes) of a checkpoint or bundle on an ImageFolder directory")
    sp.add_argument("target", help="checkpoint (.safetensors) or bundle directory")
    sp.add_argument("--data", required=True, help="ImageFolder directory (class sub-folders named like the model's labels)")
    sp.add_argument("--limit", type=positive_int, help="evaluate a seeded subset of N images")
    sp.add_argument("--subset", choices=["all", "val"], default="all",
                    help="'val': only the images of --data (the training directory) that the model's training held out")
    sp.add_argument("--split", choices=["all", "val"], dest="subset", action=RenamedFlag, new="--subset",
                    help=argparse.SUPPRESS)
    sp.add_argument("--input-codec", choices=["jpeg", "webp", "avif", "jxl"],
                    help="compress each preprocessed image first (avif, jxl: pip install edgesplit[codecs])")
    sp.add_argument("--quality", type=int, help="input codec quality (jpeg, webp: 1-100; avif, jxl: 0-100)")
    from .runtime._backend_names import BACKENDS  # names only: imports nothing

    sp.add_argument("--backend", default="onnxruntime", help=f"runtime backend for bundles: {', '.join(BACKENDS)}")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=_cmd_eval)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands that live with their subsystem (export, serve, demo); their modules import nothing heavy."""
    import importlib

    hooks = []
    for module in ("edgesplit._commands", "edgesplit.export.cli", "edgesplit.runtime.cli", "edgesplit.apps.cli"):
        try:
            hooks.append(importlib.import_module(module).register_cli)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return hooks


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except EdgesplitError as exc:
        print(f"edgesplit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgesplit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`edgesplit ... | head`): stop quietly, like other tools
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's exit-time flush of the broken pipe raises nothing."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (embedded, pytest capture): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
