"""Entropic Student: split computing with a learned entropy bottleneck (registers student ``entropic`` and
bottleneck ``factorized``)."""

from __future__ import annotations

from .bottleneck import EntropyBottleneck, factorized
from .gdn import GDN, IGDN
from .student import DEFAULT_BOTTLENECK, SplitStudent, entropic, file_sha256

__all__ = ["EntropyBottleneck", "factorized", "GDN", "IGDN", "SplitStudent", "DEFAULT_BOTTLENECK", "entropic",
           "file_sha256"]
