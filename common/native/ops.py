"""A conv block's tail, relu(max_pool(group_norm(x))), as one autograd function on C kernels.

It is differentiable twice, which is what second-order MAML needs: the backward is itself an
autograd function whose backward (the double backward) is closed form. With gy the gradient
with respect to the group norm's output (pooling routes it to each window's maximum, so it is
nonzero at a quarter of the positions at most), x̂ = (x - μ) r, r = (var + eps)^-1/2 over a
group S of M elements, and d = w·gy:

    backward:   gx = r (d - mean_S d - x̂ mean_S(d x̂)),  gw = Σ gy x̂,  gb = Σ gy
    double backward, for upstream u = ∂L/∂gx, Γ = ∂L/∂gw, B = ∂L/∂gb:
        ∂L/∂gy = B + Γ x̂ + w r P(u),           P(v) = v - mean_S v - x̂ mean_S(v x̂)
        ∂L/∂w  = Σ gy r P(u)
        ∂L/∂x  = r P(X) - (r²/M) R x̂,          X = Γ gy - r (b u + mean_S(u x̂) d),
                                                R = Σ_S u (d - mean_S d - x̂ b),  b = mean_S(d x̂)

The pooling terms are linear: scatter gy to the maxima, gather ∂L/∂gy back from them.
`tests/common/test_native.py` checks values, gradcheck and gradgradcheck against PyTorch's
composition in float64, and the routing of ties and NaNs.
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from common.native.build import NativeKernels

SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _call(kernels: NativeKernels, name: str, dtype: torch.dtype, *args) -> None:
    """Call a C kernel: tensors (and None, for NULL) go as pointers, numbers as they are."""
    args = tuple(_ptr(a) if a is None or isinstance(a, torch.Tensor) else a for a in args)
    if kernels.fn(name, SUFFIX[dtype])(*args):
        raise MemoryError(f"native kernel {name} could not allocate its work space")


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


class _NormPool(torch.autograd.Function):
    """relu(max_pool(group_norm(x))) in one kernel: the normalized map is never stored."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, kernels: NativeKernels):
        x, weight, bias = x.contiguous(), _contiguous(weight), _contiguous(bias)
        n, c = x.shape[:2]
        shape = (n, c, *(s // 2 for s in x.shape[2:]))
        y, win = torch.empty(shape, dtype=x.dtype), torch.empty(shape, dtype=torch.uint8)
        mean, rstd = torch.empty(n, groups, dtype=x.dtype), torch.empty(n, groups, dtype=x.dtype)
        _call(kernels, "gnpool_forward", x.dtype, x, weight, bias, y, win, mean, rstd, n, c, groups, eps, *_spatial(x))
        ctx.save_for_backward(x, weight)
        ctx.mark_non_differentiable(win)
        ctx.rest, ctx.groups, ctx.kernels = (win, mean, rstd), groups, kernels
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gx, gw, gb = _NormPoolBackward.apply(gy, x, weight, *ctx.rest, ctx.groups, ctx.kernels)
        affine = weight is not None
        return gx, gw if affine else None, gb if affine else None, None, None, None


class _NormPoolBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gy, x, weight, win, mean, rstd, groups: int, kernels: NativeKernels):
        ctx.set_materialize_grads(False)  # unused outputs arrive as None (NULL: zero in C)
        gy = gy.contiguous()
        n, c = x.shape[:2]
        gx = torch.empty_like(x)
        gw, gb = torch.empty(c, dtype=x.dtype), torch.empty(c, dtype=x.dtype)
        _call(
            kernels, "gnpool_backward", x.dtype, x, gy, win, weight, mean, rstd, gx, gw, gb, n, c, groups, *_spatial(x)
        )
        ctx.save_for_backward(gy, x, weight)
        ctx.rest, ctx.groups, ctx.kernels = (win, mean, rstd), groups, kernels
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx, u, ugw, ugb):
        gy, x, weight = ctx.saved_tensors
        win, mean, rstd = ctx.rest
        n, c = x.shape[:2]
        ggy, gx2, gw2 = torch.empty_like(gy), torch.empty_like(x), torch.empty(c, dtype=x.dtype)
        u, ugw, ugb = _contiguous(u), _contiguous(ugw), _contiguous(ugb)
        inputs, upstream, outputs = (x, gy, win, weight, mean, rstd), (u, ugw, ugb), (ggy, gx2, gw2)
        _call(
            ctx.kernels, "gnpool_double_backward", x.dtype, *inputs, *upstream, *outputs, n, c, ctx.groups, *_spatial(x)
        )
        return ggy, gx2, gw2 if weight is not None else None, None, None, None, None, None


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    """(spatial dims, size 0, size 1, size 2): size 2 is 1 for 2D maps."""
    spatial = tuple(x.shape[2:])
    return (len(spatial), *spatial, *(1,) * (3 - len(spatial)))


def supported(x: torch.Tensor) -> bool:
    """Whether the C kernels can take `x`: a plain (not a subclass) CPU tensor of float32/64."""
    return (
        type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.dtype in SUFFIX
        and x.numel() > 0
        and x.layout == torch.strided
    )


def norm_pool_relu(kernels: NativeKernels, x, groups: int, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """relu(max_pool(group_norm(x))) with 2^d windows, stride 2, floor mode: a conv block's tail."""
    channels = x.shape[1]
    if x.dim() not in (4, 5) or channels % groups:
        raise ValueError(
            f"norm_pool_relu: input {tuple(x.shape)} with {groups} groups; "
            "needs (N, C, H, W[, D]) with C divisible by groups"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device or t.numel() != channels):
            raise ValueError(
                f"norm_pool_relu: {name} is {t.numel()} x {t.dtype} on {t.device}, the input needs "
                f"{channels} x {x.dtype} on {x.device}"
            )
    return _NormPool.apply(x, weight, bias, groups, eps, kernels)
