"""Bounded YAML reading for manifests and recipes: safe tags only, no anchors or aliases, capped size and depth.

Torch-free. A file that breaks a bound is refused before it is built into Python objects, so a small hostile file
(an alias bomb, a deeply nested list) costs neither memory nor time, and no message quotes an unbounded value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import EdgesplitError

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_SCALAR_CHARS", "load_bounded", "short"]

MAX_YAML_BYTES = 1 << 20  # manifests and recipes are a few KB
MAX_YAML_DEPTH = 32  # nesting of mappings and lists; the deepest manifest key path is 5
MAX_SCALAR_CHARS = 4096  # the longest value a manifest or recipe needs is a path
_MAX_MESSAGE = 300


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that quote what a file held."""
    if isinstance(value, (dict, list, tuple, set)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


class _LimitError(yaml.YAMLError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses anchors and aliases, nesting deeper than ``max_depth`` and scalars longer than
    ``MAX_SCALAR_CHARS``."""

    max_depth = MAX_YAML_DEPTH

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    @staticmethod
    def _line(event: Any) -> str:
        return str(event.start_mark.line + 1) if event.start_mark is not None else "?"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _LimitError(f"line {self._line(event)}: YAML anchors and aliases (&name, *name) are not allowed; "
                              "write the value out")
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise _LimitError(f"line {self._line(event)}: a value of {len(event.value)} characters; at most "
                              f"{MAX_SCALAR_CHARS} are allowed")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise _LimitError(f"line {self._line(event)}: nested deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_bounded(path: str | Path, error: type[EdgesplitError], *, what: str = "file",
                 max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The YAML document in ``path`` (``None`` if empty); every problem raises ``error`` naming ``path``.

    Refused: files over ``max_bytes``, bytes that are not UTF-8, YAML that ``safe_load`` refuses, anchors and
    aliases, and nesting deeper than ``MAX_YAML_DEPTH``.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{p}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from exc
    if len(raw) > max_bytes:
        raise error(f"{p}: the {what} is larger than {max_bytes} bytes; is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{p}: the {what} is not UTF-8 text (byte {exc.start}); is this the right file?") from exc
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        detail = str(exc)
        if len(detail) > _MAX_MESSAGE:
            detail = detail[:_MAX_MESSAGE] + "..."
        raise error(f"{p}: the {what} is not valid YAML: {detail}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. an integer of more digits than Python converts
        raise error(f"{p}: the {what} holds a value that cannot be read ({type(exc).__name__}); "
                    "is this the right file?") from exc
