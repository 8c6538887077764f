"""argparse pieces every command module shares (the core CLI, export, serve, the bench scripts): one check and one
message per kind of flag value, and old flag names kept working."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._checks import positive_int as _positive_int
from .errors import ConfigError

__all__ = ["RenamedFlag", "positive_int"]


def positive_int(value: str) -> int:
    """argparse ``type=``: an integer >= 1 (the one check every count-like flag of the CLI uses)."""
    try:
        return _positive_int(int(value), "value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from exc
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}") from exc


class RenamedFlag(argparse.Action):
    """A flag kept under its old name: stores into the new one and says once, on stderr, what to type instead."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"edgesplit: {option_string} is now {self.new} (the old name still works for now)", file=sys.stderr)
        setattr(namespace, self.dest, values)
