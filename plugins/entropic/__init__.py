"""Entropic Student: split computing with a learned entropy bottleneck (registers student ``entropic`` and
bottleneck ``factorized``)."""

from __future__ import annotations

from edgesplit.registry import requires

requires("torch", extra="train")  # without torch: listed as unavailable, with this hint

from .bottleneck import EntropyBottleneck, factorized  # noqa: E402
from .gdn import GDN, IGDN  # noqa: E402
from .student import DEFAULT_BOTTLENECK, SplitStudent, entropic, file_sha256  # noqa: E402

__all__ = ["EntropyBottleneck", "factorized", "GDN", "IGDN", "SplitStudent", "DEFAULT_BOTTLENECK", "entropic",
           "file_sha256"]
