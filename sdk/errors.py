"""The one exception tree of edgesplit; every error a user can see is one of these.

    EdgesplitError
    ├── ConfigError          a YAML recipe or a parameter is wrong (names the file and key path)
    ├── PluginError          a component is unknown, registered twice, or its plugin failed to import
    ├── BitstreamError       a payload is truncated, corrupted, oversized or for another model (also ValueError)
    │   └── ForeignPayloadError  a well-formed payload made by another bundle (its fingerprint differs)
    ├── BundleError          a bundle is missing a file, was tampered with, or is of an unknown version
    ├── CheckpointError      a checkpoint file is missing, unreadable or not an edgesplit checkpoint
    ├── ExportError          export or its parity checks failed
    ├── DataError            an image or dataset directory cannot be read (names the path)
    ├── BackendUnavailable   a runtime backend is not installed or cannot open the requested device
    └── InferenceError       an opened backend session failed while running a graph (names backend and graph)
"""

from __future__ import annotations

__all__ = [
    "EdgesplitError",
    "ConfigError",
    "PluginError",
    "BitstreamError",
    "ForeignPayloadError",
    "CheckpointError",
    "BundleError",
    "ExportError",
    "DataError",
    "BackendUnavailable",
    "InferenceError",
]


class EdgesplitError(Exception):
    """Base class of every error edgesplit raises on purpose."""


class ConfigError(EdgesplitError):
    """A configuration file or value is invalid."""


class PluginError(EdgesplitError):
    """A registry lookup failed or a plugin could not be loaded."""


class BitstreamError(EdgesplitError, ValueError):
    """A payload failed one of the bitstream's checks."""


class ForeignPayloadError(BitstreamError):
    """A well-formed payload made by another bundle (its fingerprint is not this bundle's)."""


class CheckpointError(EdgesplitError):
    """A checkpoint file is missing, unreadable or not an edgesplit checkpoint."""


class BundleError(EdgesplitError):
    """A bundle is incomplete, tampered with, or unreadable."""


class ExportError(EdgesplitError):
    """Exporting a model, or checking the exported graph, failed."""


class DataError(EdgesplitError):
    """An image file or dataset directory could not be used."""


class BackendUnavailable(EdgesplitError):
    """A runtime backend is missing or cannot serve the requested device."""


class InferenceError(EdgesplitError):
    """A backend session that opened fine failed while running its graph (bad input shape, device fault)."""
