"""Exporters: torch -> ONNX / OpenVINO IR / TensorRT plan, post-training quantization, parity checks, bundles.

``export_checkpoint(checkpoint, out, backends=..., precision=...)`` is the entry point. Importing this package is
cheap (no torch): the implementation loads on first use, so ``edgesplit --help`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["export_checkpoint", "parse_backends", "parse_formats", "report_table", "BACKENDS", "FORMATS",
           "PRECISIONS", "REPORT_FILE", "TOLERANCES"]

if TYPE_CHECKING:
    from ._exporter import (BACKENDS, FORMATS, PRECISIONS, REPORT_FILE, export_checkpoint, parse_backends,
                            parse_formats, report_table)
    from ._parity import TOLERANCES


def __getattr__(name: str) -> Any:
    if name == "TOLERANCES":
        from ._parity import TOLERANCES

        return TOLERANCES
    if name in __all__:
        from . import _exporter

        return getattr(_exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
