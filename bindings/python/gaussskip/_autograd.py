"""Autograd for the model's operations.

Every operation is affine in x: out = A x + c with A = b I + U diag(w) U^T (SPEC §4), and
A is symmetric because U has orthonormal columns. So the backward of an operation is the
same linear map applied to the incoming gradient: the operation of the model with a zero
mean (which drops c). The backward is itself built from differentiable calls, so higher
derivatives work too (they are the same map again).
"""

from typing import Any, Callable

import torch


class _Affine(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Any, forward: Callable[[Any], Any], adjoint: Callable[[Any], Any]) -> Any:
        ctx.adjoint = adjoint
        return forward(x)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        return ctx.adjoint(grad), None, None


def apply(x: Any, forward: Callable[[Any], Any], adjoint: Callable[[Any], Any]) -> Any:
    """``forward(x)`` recorded for autograd, with ``adjoint`` (A^T = A) as its backward."""
    return _Affine.apply(x, forward, adjoint)
