"""Factorized entropy bottleneck: a learned per-channel density for the latent, uniform noise in training, one
rounding rule (around the medians) everywhere else, and the integer tables the entropy coder uses.

After Ballé, Minnen, Singh, Hwang, Johnston, "Variational image compression with a scale hyperprior" (ICLR 2018,
arXiv:1802.01436), appendix 6.1: the non-parametric cumulative density, with CompressAI's quantile/auxiliary loss.
"""

from __future__ import annotations

import logging
import warnings
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgesplit._checks import positive_int
from edgesplit.codec import MAX_SUPPORT, FactorizedCodec
from edgesplit.errors import ConfigError
from edgesplit.registry import register

from ._bound import lower_bound

__all__ = ["EntropyBottleneck", "factorized"]

log = logging.getLogger(__name__)


class EntropyBottleneck(nn.Module):
    """Per-channel learned density ``p(y_c)`` of a latent ``y`` (N, C, H, W), factorized over positions.

    The cumulative ``c(x) = sigmoid(f(x))`` of each channel is a monotone chain ``f`` of small affine maps with
    softplus-positive matrices, biases and tanh gates (``filters`` hidden widths). A likelihood is
    ``c(y + 1/2) - c(y - 1/2)``.

    Quantization, one rule everywhere: ``symbols = round(y - median)`` (``torch.round``: ties to even, like ONNX
    ``Round``), ``y_hat = symbols + median``. It is used by :meth:`forward` whenever the module is not in training
    mode (evaluation, and stage 2 where the engine puts the frozen bottleneck in eval mode), by the device/server
    split (:meth:`quantize_symbols`, :meth:`dequantize`) and so by every exported graph. Only training mode
    (stage 1) replaces rounding by additive uniform noise ``U(-1/2, 1/2)``, the usual differentiable proxy.

    ``quantiles`` (C, 1, 3) are learned by :meth:`aux_loss` to sit where the cumulative is ``tail_mass / 2``,
    ``1/2`` and ``1 - tail_mass / 2``; the middle one is the median used for rounding, the outer ones bound the
    integer support of :meth:`codec`'s tables. The auxiliary loss reaches only the quantiles (the density parameters are
    detached there), so the engine can train everything with one optimizer.
    """

    def __init__(self, channels: int, filters: Sequence[int] = (3, 3, 3), init_scale: float = 10.0,
                 tail_mass: float = 1e-9, likelihood_bound: float = 1e-9) -> None:
        super().__init__()
        positive_int(channels, "entropy bottleneck channels")
        filters = tuple(int(f) for f in filters)
        if any(f < 1 for f in filters):
            raise ConfigError(f"entropy bottleneck filters must be positive integers, got {filters!r}")
        if not init_scale > 0:
            raise ConfigError(f"entropy bottleneck init_scale must be > 0, got {init_scale!r}")
        if not 0.0 < tail_mass < 1.0:
            raise ConfigError(f"entropy bottleneck tail_mass must be in (0, 1), got {tail_mass!r}")
        self.channels = channels
        self.filters = filters
        self.init_scale = float(init_scale)
        self.tail_mass = float(tail_mass)
        self.likelihood_bound = float(likelihood_bound)

        widths = (1,) + filters + (1,)
        scale = self.init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            # softplus(init) = 1 / (scale * width): the chain starts as a logistic of scale ~init_scale
            init = math.log(math.expm1(1.0 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-self.init_scale, 0.0, self.init_scale]).repeat(channels, 1, 1))
        for p in self.parameters():
            p.no_weight_decay = True  # type: ignore[attr-defined]  # decay would bias the density and quantiles
        edge = math.log(2.0 / self.tail_mass - 1.0)
        self.register_buffer("target", torch.tensor([-edge, 0.0, edge]), persistent=False)

    def extra_repr(self) -> str:
        return f"{self.channels}, filters={self.filters}, init_scale={self.init_scale}, tail_mass={self.tail_mass}"

    # -- density --------------------------------------------------------------------------------------------
    def _logits_cumulative(self, x: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        """``f(x)`` for x of shape (C, 1, M): the cumulative's logit, per channel."""
        logits = x
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """``p(y)`` elementwise for y (N, C, H, W): ``c(y + 1/2) - c(y - 1/2)``, bounded below."""
        n, c = y.shape[:2]
        v = y.transpose(0, 1).reshape(c, 1, -1)
        lower = self._logits_cumulative(v - 0.5, stop_gradient=False)
        upper = self._logits_cumulative(v + 0.5, stop_gradient=False)
        # Subtract in the tail where both sigmoids are far from 1 (the sign trick): no cancellation to 0.
        sign = torch.where(lower + upper > 0, -1.0, 1.0).to(lower.dtype).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lower_bound(lik, self.likelihood_bound, self.training)
        return lik.reshape(c, n, *y.shape[2:]).transpose(0, 1)

    def aux_loss(self) -> torch.Tensor:
        """Moves the quantiles to ``c = tail_mass/2, 1/2, 1 - tail_mass/2``; no gradient reaches the density."""
        with torch.autocast(device_type=self.quantiles.device.type, enabled=False):
            logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
            return torch.abs(logits - self.target).sum()

    # -- quantization (the one rule) --------------------------------------------------------------------------
    def medians(self) -> torch.Tensor:
        """The learned medians, shaped (1, C, 1, 1) to broadcast over a latent."""
        return self.quantiles.detach()[:, 0, 1].view(1, -1, 1, 1)

    def quantize_symbols(self, y: torch.Tensor) -> torch.Tensor:
        """int32 symbols ``round(y - median)`` (ties to even), what the device sends."""
        return torch.round(y - self.medians()).to(torch.int32)

    def dequantize(self, symbols: torch.Tensor) -> torch.Tensor:
        """``symbols + median`` as float: the latent the decoder sees."""
        return symbols.to(self.quantiles.dtype) + self.medians()

    def forward(self, y: torch.Tensor, training: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y_hat, likelihoods)``: noisy in training mode (or ``training=True``), rounded around the medians
        otherwise."""
        noisy = self.training if training is None else training
        # float32 under autocast too: the rounding rule and the likelihoods must match the float32 tables
        with torch.autocast(device_type=y.device.type, enabled=False):
            y = y.float()
            if noisy:
                y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            else:
                y_hat = self.dequantize(self.quantize_symbols(y))
            return y_hat, self.likelihood(y_hat)

    # -- tables -------------------------------------------------------------------------------------------
    def support(self) -> tuple[np.ndarray, int]:
        """Per-channel first symbol (int64, <= 0) and the common table length K, from the learned quantiles.

        Symbols are relative to the median: channel c covers ``offsets[c] .. offsets[c] + K - 1`` with
        ``offsets = floor(lower - median)``; the widest channel sets K (``ceil(upper - median)`` at its top).
        """
        q = self.quantiles.detach().cpu().to(torch.float64).numpy()[:, 0, :]
        limit = MAX_SUPPORT // 2 - 1  # values beyond take the codec's escape path
        lo = np.clip(np.floor(q[:, 0] - q[:, 1]), -limit, 0).astype(np.int64)
        hi = np.clip(np.ceil(q[:, 2] - q[:, 1]), 0, limit).astype(np.int64)
        return lo, int((hi - lo).max()) + 1

    def _pmf_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Unnormalized probabilities (C, K) of the integer symbols of :meth:`support`, in float64 numpy."""
        offsets, k = self.support()
        medians = self.quantiles.detach().cpu().to(torch.float64).numpy()[:, 0, 1]
        x = (offsets[:, None] + np.arange(k, dtype=np.int64)[None, :]).astype(np.float64) + medians[:, None]
        x = x[:, None, :]  # (C, 1, K)
        lower = self._logits_cumulative_np(x - 0.5)
        upper = self._logits_cumulative_np(x + 0.5)
        sign = np.where(lower + upper > 0, -1.0, 1.0)
        pmf = np.abs(_sigmoid(sign * upper) - _sigmoid(sign * lower))[:, 0, :]
        return pmf, offsets

    def _logits_cumulative_np(self, x: np.ndarray) -> np.ndarray:
        """float64 twin of :meth:`_logits_cumulative` (the matrix products are written as explicit sums over at
        most a few terms, so the result does not depend on a BLAS's summation order)."""
        logits = x
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            m = np.logaddexp(0.0, _np64(matrix))  # softplus
            logits = (m[:, :, :, None] * logits[:, None, :, :]).sum(axis=2) + _np64(bias)
            if i < len(self.factors):
                logits = logits + np.tanh(_np64(self.factors[i])) * np.tanh(logits)
        return logits

    def codec(self) -> FactorizedCodec:
        """The entropy codec for this density: one integer table per channel over :meth:`support`.

        Derived in float64 numpy from the float32 parameters, so the same parameters give the same tables on a
        given platform; a bundle ships the resulting integer tables, so no other machine needs to re-derive them.
        """
        with torch.no_grad():
            misfit = float(self.aux_loss()) / self.channels
        if misfit > 1.0:
            log.warning("entropy bottleneck quantiles are off their targets (aux loss %.2f per channel): the tables' "
                        "support may be too narrow, and values outside it cost escape bits; train with the aux loss "
                        "(and a larger lr for bottleneck.quantiles)", misfit)
        pmf, offsets = self._pmf_grid()
        pmf = pmf / pmf.sum(axis=1, keepdims=True)
        return FactorizedCodec(pmf, offsets.astype(np.int32))

    def tables(self) -> FactorizedCodec:
        """Deprecated name of :meth:`codec` (the tables are the codec's data; the codec is what this returns)."""
        warnings.warn("EntropyBottleneck.tables() is deprecated: use codec()", DeprecationWarning, stacklevel=2)
        return self.codec()


def _np64(p: torch.Tensor) -> np.ndarray:
    return p.detach().cpu().to(torch.float32).to(torch.float64).numpy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows; keeps full relative precision in both tails
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@register("bottleneck", "factorized")
def factorized(channels: int, filters: Sequence[int] = (3, 3, 3), init_scale: float = 10.0,
               tail_mass: float = 1e-9) -> EntropyBottleneck:
    """The factorized entropy bottleneck of Ballé et al. 2018 (see :class:`EntropyBottleneck`)."""
    return EntropyBottleneck(channels, filters, init_scale, tail_mass)
