"""The ``edgesplit`` command line: plugins, train, eval, export, serve, demo.

Heavy imports (torch, runtimes) happen inside each command, so ``edgesplit --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

from .errors import EdgesplitError

__all__ = ["main"]


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import KINDS, available, broken_plugins

    for kind in KINDS:
        names = available(kind)
        print(f"{kind}: {', '.join(names) if names else '(none)'}")
    broken = broken_plugins()
    for b in broken:
        print(f"BROKEN plugin {b.name!r} ({b.value}, from {b.distribution}): {b.error}")
    return 1 if broken and args.strict else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_train_config
    from .train import train

    cfg = load_train_config(args.config)
    metrics = train(cfg, args.out, data_root=args.data, resume=args.resume, source=args.config,
                    progress=not args.no_progress)
    print(json.dumps({k: v for k, v in metrics.items() if k != "labels"}, indent=2))
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
    sp.add_argument("--out", required=True, help="run directory (checkpoints, log.jsonl, metrics.json)")
    sp.add_argument("--data", help="ImageFolder dataset directory (overrides data.root)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    sp.set_defaults(func=_cmd_train)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


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


if __name__ == "__main__":
    sys.exit(main())
