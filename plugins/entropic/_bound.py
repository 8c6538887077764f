"""A lower bound whose gradient still flows when it points back into the allowed range (Ballé et al. 2018).

Modules use the custom gradient rule in training mode only; in evaluation (and so in every exported graph) the
bound is a plain ``clamp_min``: the same values, and no custom autograd op for an exporter to trip over.
"""

from __future__ import annotations

import torch

__all__ = ["lower_bound"]


class _LowerBound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # Pass the gradient where x is in range, or where descent would move x back up into the range;
        # with a plain clamp a parameter that dips below the bound would never receive a gradient again.
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes.to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float, training: bool) -> torch.Tensor:
    """``max(x, bound)``; with the gradient-preserving rule when ``training`` and autograd is recording."""
    if training and torch.is_grad_enabled() and x.requires_grad:
        return _LowerBound.apply(x, bound)
    return x.clamp_min(bound)
