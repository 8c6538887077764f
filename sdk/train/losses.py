"""Training objectives, registered as kind ``loss``: cross-entropy, KD, feature MSE, ND, and rate.

A loss is an ``nn.Module`` with ``student_keys``/``teacher_keys`` (the outputs it reads: ``logits``, a stage
name, ``bits``) and ``forward(student_out, teacher_out, target) -> scalar``. Its own parameters (projections)
are trained with the student.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.errors import ConfigError
from edgesplit.registry import register

Outputs = dict[str, torch.Tensor]


class Loss(nn.Module):
    student_keys: frozenset[str] = frozenset({"logits"})
    teacher_keys: frozenset[str] = frozenset()
    needs_class_labels: bool = False  # True: ``target`` must be class indices (no mixup/CutMix soft targets)

    def forward(self, s: Outputs, t: Outputs | None, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _teacher_outputs(loss: Loss, t: Outputs | None) -> Outputs:
    if t is None:
        raise ConfigError(f"{type(loss).__name__} reads the teacher's outputs {sorted(loss.teacher_keys)}, and there "
                          "is no teacher; give the recipe a teacher: or drop this loss")
    return t


def _channels(model: nn.Module | None, stage: str, role: str) -> int:
    chs = getattr(model, "stage_channels", None)
    if model is None or chs is None or stage not in chs:
        raise ConfigError(f"the {role} has no stage {stage!r} to distill from (stages: {sorted(chs or {})})")
    return int(chs[stage])


class CrossEntropy(Loss):
    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, s: Outputs, t: Outputs | None, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(s["logits"], target, label_smoothing=self.label_smoothing)


class KnowledgeDistillation(Loss):
    """Hinton et al.'s KD: KL between softened teacher and student distributions, times T^2."""

    teacher_keys = frozenset({"logits"})

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, s: Outputs, t: Outputs | None, target: torch.Tensor) -> torch.Tensor:
        t = _teacher_outputs(self, t)
        T = self.temperature
        log_p_s = F.log_softmax(s["logits"] / T, dim=1)
        log_p_t = F.log_softmax(t["logits"].detach() / T, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T


class FeatureMSE(Loss):
    """Mean squared error between student and teacher features at named stages (a 1x1 projection if widths differ)."""

    def __init__(self, stages: Sequence[str], student: nn.Module | None = None, teacher: nn.Module | None = None,
                 stage_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.stages = list(stages)
        if not self.stages:
            raise ConfigError("feature_mse needs at least one stage in params.stages")
        self.student_keys = frozenset(self.stages)
        self.teacher_keys = frozenset(self.stages)
        self.stage_weights = list(stage_weights) if stage_weights is not None else [1.0] * len(self.stages)
        self.proj = nn.ModuleDict()
        for st in self.stages:
            cs, ct = _channels(student, st, "student"), _channels(teacher, st, "teacher")
            self.proj[st] = nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1, bias=False)

    def forward(self, s: Outputs, t: Outputs | None, target: torch.Tensor) -> torch.Tensor:
        t = _teacher_outputs(self, t)
        total = s["logits"].new_zeros(())
        for st, w in zip(self.stages, self.stage_weights):
            fs, ft = self.proj[st](s[st]), t[st].detach()
            if fs.shape[-2:] != ft.shape[-2:]:
                fs = F.interpolate(fs, size=ft.shape[-2:], mode="bilinear", align_corners=False)
            total = total + w * F.mse_loss(fs, ft)
        return total


class NormDirection(Loss):
    """ND loss of Wang et al., "Improving Knowledge Distillation via Regularizing Feature Norm and Direction"
    (arXiv:2305.17007): pull the student's embedding along the teacher's class-mean direction, with a norm at least
    the larger of the two embeddings' norms: ``1 - <f_s, c_y/|c_y|> / max(|f_s|, |f_t|)``.

    Class means of the teacher's embeddings (pooled ``stage``) are kept as running averages over training batches.
    """

    needs_class_labels = True

    def __init__(self, student: nn.Module | None = None, teacher: nn.Module | None = None, stage: str = "stage4",
                 num_classes: int | None = None, momentum: float = 0.99) -> None:
        super().__init__()
        self.stage = stage
        self.student_keys = frozenset({stage, "logits"})
        self.teacher_keys = frozenset({stage})
        cs, ct = _channels(student, stage, "student"), _channels(teacher, stage, "teacher")
        self.proj = nn.Identity() if cs == ct else nn.Linear(cs, ct, bias=False)
        if num_classes is None:
            head = getattr(getattr(teacher, "head", None), "fc", None)
            if head is None:
                raise ConfigError("nd loss needs params.num_classes (the teacher has no head.fc to read it from)")
            num_classes = int(head.out_features)
        self.momentum = float(momentum)
        self.register_buffer("centers", torch.zeros(num_classes, ct))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def _update_centers(self, f_t: torch.Tensor, target: torch.Tensor) -> None:
        for c in target.unique():
            mean = f_t[target == c].mean(0)
            i = int(c)
            if self.seen[i]:
                self.centers[i].mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
            else:
                self.centers[i].copy_(mean)
                self.seen[i] = True

    def forward(self, s: Outputs, t: Outputs | None, target: torch.Tensor) -> torch.Tensor:
        t = _teacher_outputs(self, t)
        f_s = self.proj(s[self.stage].mean(dim=(2, 3)))
        f_t = t[self.stage].detach().mean(dim=(2, 3))
        if self.training:
            self._update_centers(f_t, target)
        e_c = F.normalize(self.centers[target], dim=1)
        max_norm = torch.maximum(f_s.norm(dim=1), f_t.norm(dim=1)).clamp_min(1e-6)
        return (1.0 - (f_s * e_c).sum(dim=1) / max_norm).mean()


class Rate(Loss):
    """Bits per image from an entropy bottleneck (``bits``: the batch's total -log2 likelihood)."""

    student_keys = frozenset({"bits"})

    def forward(self, s: Outputs, t: Outputs | None, target: torch.Tensor) -> torch.Tensor:
        return s["bits"] / target.shape[0]


class Auxiliary(Loss):
    """A model's own auxiliary loss (the bottleneck's quantile loss), read from its ``aux`` output."""

    student_keys = frozenset({"aux"})

    def forward(self, s: Outputs, t: Outputs | None, target: torch.Tensor) -> torch.Tensor:
        return s["aux"]


@register("loss", "ce")
def _ce(label_smoothing: float = 0.0) -> Loss:
    return CrossEntropy(label_smoothing)


@register("loss", "kd")
def _kd(temperature: float = 4.0) -> Loss:
    return KnowledgeDistillation(temperature)


@register("loss", "feature_mse")
def _feature_mse(stages: Sequence[str], student: nn.Module | None = None, teacher: nn.Module | None = None,
                 stage_weights: Sequence[float] | None = None) -> Loss:
    return FeatureMSE(stages, student, teacher, stage_weights)


@register("loss", "nd")
def _nd(student: nn.Module | None = None, teacher: nn.Module | None = None, stage: str = "stage4",
        num_classes: int | None = None, momentum: float = 0.99) -> Loss:
    return NormDirection(student, teacher, stage, num_classes, momentum)


@register("loss", "rate")
def _rate() -> Loss:
    return Rate()


@register("loss", "aux")
def _aux() -> Loss:
    return Auxiliary()
