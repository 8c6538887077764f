"""Torch-free runtime: backends, DeviceEncoder, DeviceModel, ServerDecoder, HTTP service.

Names are imported on first access, so ``edgesplit --help`` (which imports ``edgesplit.runtime.cli``) stays instant;
runtime libraries (onnxruntime, openvino, tensorrt) and HTTP frameworks load only when a session or app is made.
``edgesplit.runtime.service`` (FastAPI) and ``edgesplit.runtime.ray_serve`` (Ray Serve) are imported explicitly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends import BACKENDS, Session, open_part, open_session
    from .device import DeviceEncoder, DeviceModel, Prediction
    from .server import ForeignPayloadError, ServerDecoder

__all__ = [
    "BACKENDS",
    "Session",
    "open_session",
    "open_part",
    "Prediction",
    "DeviceEncoder",
    "DeviceModel",
    "ServerDecoder",
    "ForeignPayloadError",
]

_HOME = {"BACKENDS": "backends", "Session": "backends", "open_session": "backends", "open_part": "backends",
         "Prediction": "device", "DeviceEncoder": "device", "DeviceModel": "device",
         "ServerDecoder": "server", "ForeignPayloadError": "server"}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'edgesplit.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
