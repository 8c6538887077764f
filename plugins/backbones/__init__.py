"""Backbones with named stages: ResNet teachers, MobileNetV2 and VoVNet students (registered kind ``backbone``), and
``wrap_module``, which makes any ``nn.Module`` with named stages a teacher."""

from __future__ import annotations

from edgesplit.registry import requires

requires("torch", extra="train")  # without torch: listed as unavailable, with this hint

from ._base import STAGES, Backbone, ClassifierHead, ConvNormAct, count_macs  # noqa: E402
from . import resnet  # noqa: E402, F401  (registers)
from . import mobilenetv2  # noqa: E402, F401  (registers)
from . import vovnet  # noqa: E402, F401  (registers)
from .wrap import WrappedTeacher, load_weights, wrap_module  # noqa: E402

__all__ = ["STAGES", "Backbone", "ClassifierHead", "ConvNormAct", "WrappedTeacher", "count_macs", "load_weights",
           "wrap_module"]
