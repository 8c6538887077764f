"""Generalized divisive normalization: GDN and its inverse IGDN (Ballé, Laparra, Simoncelli, "Density Modeling of
Images using a Generalized Normalization Transformation", arXiv:1511.06281), the nonlinearity of the bottleneck
encoder and decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._bound import lower_bound

__all__ = ["GDN", "IGDN", "NonNegative"]

_PEDESTAL = 2.0**-36  # (2^-18)^2, as in Ballé's reference implementation


class NonNegative(nn.Module):
    """Stores ``p`` with ``value = max(p, sqrt(minimum + pedestal))^2 - pedestal``: values stay >= ``minimum``
    and small values keep useful gradients (the square root reparameterization of Ballé et al.)."""

    def __init__(self, minimum: float = 0.0) -> None:
        super().__init__()
        self.bound = float((minimum + _PEDESTAL) ** 0.5)

    @staticmethod
    def init(value: torch.Tensor) -> torch.Tensor:
        """The stored parameter that represents ``value``."""
        return torch.sqrt(torch.clamp_min(value + _PEDESTAL, _PEDESTAL))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return lower_bound(p, self.bound, self.training) ** 2 - _PEDESTAL


class GDN(nn.Module):
    """``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``; the sum is a 1x1 convolution over ``x^2``.

    ``beta`` is kept >= ``beta_min`` and ``gamma`` >= 0 by the :class:`NonNegative` reparameterization; ``inverse``
    multiplies instead of dividing (IGDN, the decoder's approximate inverse).
    """

    inverse: bool = False

    def __init__(self, channels: int, *, beta_min: float = 1e-6, gamma_init: float = 0.1) -> None:
        super().__init__()
        self.channels = int(channels)
        self.beta_reparam = NonNegative(beta_min)
        self.gamma_reparam = NonNegative(0.0)
        self.beta = nn.Parameter(NonNegative.init(torch.ones(channels)))
        self.gamma = nn.Parameter(NonNegative.init(gamma_init * torch.eye(channels)))

    def extra_repr(self) -> str:
        return f"{self.channels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma)
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)

    def macs_per_pixel(self) -> int:
        """Multiply-accumulates per output pixel of the normalization's 1x1 convolution (for MAC reports)."""
        return self.channels * self.channels


class IGDN(GDN):
    """Inverse GDN: ``y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)``."""

    inverse = True
