"""A backbone is a chain of named stages (stem, stage1..stage4, head) that can be cut after any stage."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from edgesplit.errors import ConfigError

STAGES: tuple[str, ...] = ("stem", "stage1", "stage2", "stage3", "stage4", "head")


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


class ConvNormAct(nn.Module):
    """Convolution, normalization and activation (``act_layer=None``: no activation, a linear layer)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] | None = _relu) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = norm_layer(out_chs)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ClassifierHead(nn.Module):
    """Global average pool, optional dropout, linear classifier."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.flatten(self.pool(x))))


class Backbone(nn.Module):
    """Base class of the first-party teachers (``edgesplit.interfaces.Teacher``): subclasses set ``stem``,
    ``stage1``..``stage4`` and ``head`` (a ``ClassifierHead``), ``stage_channels`` and ``stage_strides``."""

    stage_names: tuple[str, ...] = STAGES
    stage_channels: dict[str, int]
    stage_strides: dict[str, int]

    def stage(self, name: str) -> nn.Module:
        if name not in self.stage_names:
            raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(self.stage_names)}")
        return getattr(self, name)

    def replace_stage(self, name: str, module: nn.Module) -> None:
        """Put ``module`` in place of stage ``name`` (a split student drops the stages it cuts off)."""
        self.stage(name)
        setattr(self, name, module)

    @property
    def num_classes(self) -> int | None:
        """The head's output size (None when the head is not a linear classifier)."""
        fc = getattr(getattr(self, "head", None), "fc", None)
        return int(fc.out_features) if isinstance(fc, nn.Linear) else None

    def stages_between(self, after: str | None, until: str | None) -> list[str]:
        """Names of the stages strictly after ``after`` up to and including ``until`` (None: the ends)."""
        start = 0 if after is None else self.stage_names.index(after) + 1
        stop = len(self.stage_names) if until is None else self.stage_names.index(until) + 1
        return list(self.stage_names[start:stop])

    def forward_stages(
        self, x: torch.Tensor, *, after: str | None = None, until: str | None = None, keep: Iterable[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the stages after ``after`` up to ``until``; return the output and the kept stages' outputs."""
        keep = set(keep)
        kept: dict[str, torch.Tensor] = {}
        for name in self.stages_between(after, until):
            x = self.stage(name)(x)
            if name in keep:
                kept[name] = x
        return x, kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[0]

    def num_params(self, stages: Iterable[str] | None = None) -> int:
        names = self.stage_names if stages is None else list(stages)
        return sum(p.numel() for n in names for p in self.stage(n).parameters())


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (conv, linear; per batch element), counted with hooks."""
    total = 0

    def conv_hook(mod: nn.Conv2d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total += int(out[0].numel()) * k

    def linear_hook(mod: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += int(out[0].numel()) * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(*inputs)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v
