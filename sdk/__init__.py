"""edgesplit: put vision models on edge devices (torch-free core).

Importing this package never imports torch; training lives in ``edgesplit.train`` and the plugins.
"""

from __future__ import annotations

from .errors import (
    BackendUnavailable,
    BitstreamError,
    BundleError,
    CheckpointError,
    ConfigError,
    DataError,
    EdgesplitError,
    ExportError,
    ForeignPayloadError,
    InferenceError,
    PluginError,
)
from . import errors as _errors
from .registry import available, create, register

__version__ = "0.1.0"

__all__ = ["__version__", *_errors.__all__, "available", "create", "register"]
