"""The first-party runtime backends by name; imports nothing, so help texts and the exporter can list them."""

from __future__ import annotations

__all__ = ["BACKENDS"]

BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt")
