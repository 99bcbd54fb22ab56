"""Gradient reversal layer (Ganin & Lempitsky 2015; Ganin et al. 2016, §3.3, eq. 13-14).

Forward is the identity; backward multiplies the incoming gradient by −λ, so minimizing the
domain classifier's loss through it *maximizes* that loss for the feature extractor.

>>> import torch
>>> x = torch.ones(3, requires_grad=True)
>>> gradient_reversal(x, 0.5).sum().backward()
>>> x.grad
tensor([-0.5000, -0.5000, -0.5000])
"""

from __future__ import annotations

import torch
from torch import nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output.neg() * ctx.coefficient, None


def gradient_reversal(inputs: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """Identity forward, −``coefficient`` × gradient backward."""
    return _GradientReversal.apply(inputs, float(coefficient))


class GradientReversal(nn.Module):
    """Module form of :func:`gradient_reversal`; set ``grl_coefficient`` as training goes."""

    def __init__(self, grl_coefficient: float = 1.0) -> None:
        super().__init__()
        self.grl_coefficient = grl_coefficient

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return gradient_reversal(inputs, self.grl_coefficient)

    def extra_repr(self) -> str:
        return f"grl_coefficient={self.grl_coefficient}"
