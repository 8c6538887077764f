"""A teacher from someone else's code base: a small residual CNN in plain torch (no edgesplit base class), made a
teacher that an Entropic Student can cut with ``wrap_module`` and registered as backbone ``plainnet``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit import register
from edgesplit.plugins.backbones import wrap_module


class Block(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.proj(x))


class PlainNet(nn.Module):
    """Stem (stride 4), three residual layers (strides 4, 8, 16), global pooling and a linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.layer3 = Block(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# All it takes to make PlainNet a teacher: name its stages and its classifier. Registered, it is rebuilt by name
# from checkpoints (a student's recipe names the teacher checkpoint, whose recipe names "plainnet").
@register("backbone", "plainnet")
def plainnet(num_classes: int = 10, width: int = 16, weights: str | None = None) -> nn.Module:
    """``PlainNet`` as a teacher; ``weights``: its own trained weights (safetensors or a torch state dict)."""
    return wrap_module(PlainNet(num_classes, width), stages=["layer1", "layer2", "layer3"], head="fc",
                       input_size=64, weights=weights)
