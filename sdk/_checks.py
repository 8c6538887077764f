"""Value checks shared by configs, the CLI, plugins and the runtime, so each rule and its message lives once."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, EdgesplitError

__all__ = ["is_int", "positive_int"]


def is_int(value: Any) -> bool:
    """True for an ``int`` that is not a ``bool`` (YAML and JSON give ``true`` where a count was meant)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, what: str, *, error: type[EdgesplitError] = ConfigError, hint: str = "") -> int:
    """``value`` if it is an integer >= 1, else ``error`` naming ``what`` (e.g. ``"--threads"``, ``"top_k"``)."""
    if not is_int(value) or value < 1:
        raise error(f"{what} must be a positive integer, got {value!r}{hint}")
    return value
