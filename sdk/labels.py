"""Display names of class ids: a ``labels.yaml`` mapping (id -> name) read at training or export time, and the
names a bundle or checkpoint carries next to its ids (falling back to the ids themselves). Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError

__all__ = ["read_label_names", "names_for", "check_names"]


def read_label_names(path: str | Path) -> dict[str, str]:
    """A YAML mapping of class id to display name (``n01440764: tench``); anything else is a ``ConfigError``."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the label names file ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{p}: a label names file maps each class id to its display name "
                          "(one 'id: name' line per class)")
    names = {}
    for key, value in data.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
            raise ConfigError(f"{p}: {key!r}: the display name must be a non-empty string, got {value!r}")
        names[str(key)] = str(value)
    return names


def names_for(labels: Sequence[str], mapping: Mapping[str, str] | None = None,
              carried: Any = None) -> list[str]:
    """Display names parallel to ``labels``: from ``mapping`` first, then the names an artifact carries
    (``carried``, a list parallel to ``labels``), then the id itself."""
    stored = list(carried) if isinstance(carried, (list, tuple)) and len(carried) == len(labels) else None
    out = []
    for i, label in enumerate(labels):
        if mapping and label in mapping:
            out.append(mapping[label])
        elif stored is not None:
            out.append(str(stored[i]))
        else:
            out.append(str(label))
    return out


def check_names(labels: Sequence[str], mapping: Mapping[str, str], source: str) -> list[str]:
    """The names of ``labels`` from ``mapping``; ids the mapping does not know keep their id, ids it has that the
    model does not are a ``ConfigError`` (a names file for another model)."""
    unknown = sorted(set(mapping) - set(labels))
    if unknown and len(unknown) == len(mapping):
        raise ConfigError(f"{source}: none of its class ids ({', '.join(unknown[:3])}...) are labels of this model "
                          f"({', '.join(list(labels)[:3])}...); is it the names file of another model?")
    return names_for(labels, mapping)
