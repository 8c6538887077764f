"""An example third-party plugin: a tiny four-stage CNN registered as backbone ``tinynet``, and a teacher written in
plain torch (``plainnet``, in ``plainnet.py``) that a split student can cut.

Install it (``pip install samples/plugin_example``) and both show up in ``edgesplit plugins`` and in
``edgesplit.create("backbone", ...)`` with no change to edgesplit.
"""

from __future__ import annotations

from edgesplit.registry import requires

requires("torch", extra="train")  # without torch, `edgesplit plugins` lists this plugin as unavailable, with the hint

from torch import nn  # noqa: E402

from edgesplit import register  # noqa: E402
from edgesplit.plugins.backbones import Backbone, ClassifierHead  # noqa: E402

from . import plainnet  # noqa: E402, F401  (registers backbone "plainnet")


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyNet(Backbone):
    """Stem at stride 4, then one strided conv per stage: the smallest model with edgesplit's named stages."""

    def __init__(self, num_classes: int = 1000, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv(3, w, 2), _conv(w, w, 2))
        self.stage1 = _conv(w, w, 1)
        self.stage2 = _conv(w, 2 * w, 2)
        self.stage3 = _conv(2 * w, 4 * w, 2)
        self.stage4 = _conv(4 * w, 8 * w, 2)
        self.head = ClassifierHead(8 * w, num_classes)
        self.stage_channels = {"stem": w, "stage1": w, "stage2": 2 * w, "stage3": 4 * w, "stage4": 8 * w}
        self.stage_strides = {"stem": 4, "stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}


@register("backbone", "tinynet")
def tinynet(num_classes: int = 1000, width: int = 16) -> TinyNet:
    return TinyNet(num_classes=num_classes, width=width)
