"""Backbones with named stages: ResNet teachers, MobileNetV2 and VoVNet students (registered kind ``backbone``), and
``wrap_module``, which makes any ``nn.Module`` with named stages a teacher."""

from __future__ import annotations

from ._base import STAGES, Backbone, ClassifierHead, ConvNormAct, count_macs
from . import resnet  # noqa: F401  (registers)
from . import mobilenetv2  # noqa: F401  (registers)
from . import vovnet  # noqa: F401  (registers)
from .wrap import WrappedTeacher, load_weights, wrap_module

__all__ = ["STAGES", "Backbone", "ClassifierHead", "ConvNormAct", "WrappedTeacher", "count_macs", "load_weights",
           "wrap_module"]
