"""Batch mixing for training: mixup (Zhang et al., arXiv:1710.09412) and CutMix (Yun et al., arXiv:1905.04899).

The student and the teacher see the same mixed images ("consistent" distillation, as in Beyer et al., "Knowledge
distillation: A good teacher is patient and consistent", arXiv:2106.05237), and labels become mixed one-hot targets.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["mix_batch"]


def _cut_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly at random (clipped at the borders)."""
    ratio = float(np.sqrt(1.0 - lam))
    h, w = int(round(height * ratio)), int(round(width * ratio))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, left = max(cy - h // 2, 0), max(cx - w // 2, 0)
    return top, min(cy + h - h // 2, height), left, min(cx + w - w // 2, width)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, rng: np.random.Generator, *,
              mixup: float = 0.0, cutmix: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a shuffled copy of itself; returns the images and (N, num_classes) soft targets.

    ``mixup`` and ``cutmix`` are the alphas of the Beta distribution that draws the mixing weight (0 = off). With
    both on, each batch uses one of the two, chosen with equal odds. CutMix's weight is the pasted box's true area.
    """
    if mixup < 0 or cutmix < 0:
        raise ValueError(f"mixing alphas must be >= 0, got mixup={mixup}, cutmix={cutmix}")
    one_hot = F.one_hot(y.long(), num_classes).to(x.dtype)
    if mixup == 0 and cutmix == 0:
        return x, one_hot
    use_cutmix = cutmix > 0 and (mixup == 0 or bool(rng.random() < 0.5))
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0]))
    if use_cutmix:
        top, bottom, left, right = _cut_box(x.shape[2], x.shape[3], lam, rng)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / float(x.shape[2] * x.shape[3])
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * one_hot + (1.0 - lam) * one_hot[perm]
