"""What ``edgesplit predict`` shares between checkpoints and bundles: the images of a path, and the table it prints.

Torch-free. A row is ``{file, top: [{id, name, prob}, ...], payload_bytes}`` (``payload_bytes`` for split models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .data import IMAGE_EXTENSIONS
from .errors import DataError

__all__ = ["list_images", "format_rows", "display_path", "top_entries"]


def list_images(target: str | Path) -> tuple[Path, list[Path]]:
    """(root, images): one image file, or every image under a directory (sorted, sub-folders included)."""
    p = Path(target)
    if p.is_file():
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{p}: not an image file ({', '.join(IMAGE_EXTENSIONS)})")
        return p.parent, [p]
    if not p.is_dir():
        raise DataError(f"{p}: no such image file or directory")
    found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise DataError(f"{p}: no images in this directory or below ({', '.join(IMAGE_EXTENSIONS)})")
    return p, found


def display_path(path: Path, root: Path) -> str:
    """The image's path below ``root`` (class folder included), or its name."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width table: file, top-1 name (id), probability, then the other top-k, and payload bytes if any."""
    with_bytes = any(r.get("payload_bytes") is not None for r in rows)
    k = max((len(r["top"]) for r in rows), default=1)
    header = ["file", "top-1", "prob"] + (["next"] if k > 1 else []) + (["payload B"] if with_bytes else [])
    lines = [header]
    for r in rows:
        best = r["top"][0]
        top1 = best["name"] if best["name"] == best["id"] else f"{best['name']} ({best['id']})"
        line = [r["file"], top1, f"{best['prob']:.3f}"]
        if k > 1:
            line.append(", ".join(f"{t['name']} {t['prob']:.3f}" for t in r["top"][1:]))
        if with_bytes:
            line.append(str(r["payload_bytes"]) if r.get("payload_bytes") is not None else "")
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    right = {2, len(header) - 1} if with_bytes else {2}
    out = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
           for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def top_entries(indices: Sequence[int], probs: Sequence[float], labels: Sequence[str],
                names: Sequence[str]) -> list[dict[str, Any]]:
    """``[{id, name, prob}]`` best first."""
    return [{"id": labels[i], "name": names[i], "prob": float(p)} for i, p in zip(indices, probs)]
