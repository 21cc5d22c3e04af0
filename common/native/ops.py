"""Group norm and 2^d max-pooling as autograd functions on the fused C kernels.

Each is differentiable twice, which is what second-order MAML needs: the backward is itself an
autograd function whose backward (the double backward) is closed form. With x̂ = (x - μ) r,
r = (var + eps)^-1/2 over a group S of M elements, and d = w·gy:

    backward:   gx = r (d - mean_S d - x̂ mean_S(d x̂)),  gw = Σ gy x̂,  gb = Σ gy
    double backward, for upstream u = ∂L/∂gx, Γ = ∂L/∂gw, B = ∂L/∂gb:
        ∂L/∂gy = B + Γ x̂ + w r P(u),           P(v) = v - mean_S v - x̂ mean_S(v x̂)
        ∂L/∂w  = Σ gy r P(u)
        ∂L/∂x  = r P(X) - (r²/M) R x̂,          X = Γ gy - r (b u + mean_S(u x̂) d),
                                                R = Σ_S u (d - mean_S d - x̂ b),  b = mean_S(d x̂)

`tests/common/test_native.py` checks both against PyTorch with gradcheck/gradgradcheck in
float64. Max-pool's backward scatters into the window of each maximum; its backward gathers.
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
    if kernels.fn(name, SUFFIX[dtype])(*args):
        raise MemoryError(f"native kernel {name} could not allocate its work space")


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, kernels: NativeKernels):
        x, weight, bias = x.contiguous(), _contiguous(weight), _contiguous(bias)
        n, c = x.shape[:2]
        y = torch.empty_like(x)
        mean, rstd = torch.empty(n, groups, dtype=x.dtype), torch.empty(n, groups, dtype=x.dtype)
        _call(kernels, "gn_forward", x.dtype, _ptr(x), _ptr(weight), _ptr(bias), _ptr(y), _ptr(mean), _ptr(rstd),
              n, c, x[0, 0].numel(), groups, eps)
        ctx.save_for_backward(x, weight)
        ctx.stats, ctx.groups, ctx.kernels = (mean, rstd), groups, kernels
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gx, gw, gb = _GroupNormBackward.apply(gy, x, weight, *ctx.stats, ctx.groups, ctx.kernels)
        affine = weight is not None
        return gx, gw if affine else None, gb if affine else None, None, None, None


class _GroupNormBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gy, x, weight, mean, rstd, groups: int, kernels: NativeKernels):
        ctx.set_materialize_grads(False)  # unused outputs arrive as None (NULL: zero in C)
        gy = gy.contiguous()
        n, c = x.shape[:2]
        gx = torch.empty_like(x)
        gw, gb = torch.empty(c, dtype=x.dtype), torch.empty(c, dtype=x.dtype)
        _call(kernels, "gn_backward", x.dtype, _ptr(x), _ptr(gy), _ptr(weight), _ptr(mean), _ptr(rstd),
              _ptr(gx), _ptr(gw), _ptr(gb), n, c, x[0, 0].numel(), groups)
        ctx.save_for_backward(gy, x, weight)
        ctx.stats, ctx.groups, ctx.kernels = (mean, rstd), groups, kernels
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx, u, ugw, ugb):
        gy, x, weight = ctx.saved_tensors
        mean, rstd = ctx.stats
        n, c = x.shape[:2]
        ggy, gx2 = torch.empty_like(x), torch.empty_like(x)
        gw2 = torch.empty(c, dtype=x.dtype)
        u, ugw, ugb = _contiguous(u), _contiguous(ugw), _contiguous(ugb)
        _call(ctx.kernels, "gn_double_backward", x.dtype, _ptr(x), _ptr(gy), _ptr(weight), _ptr(mean),
              _ptr(rstd), _ptr(u), _ptr(ugw), _ptr(ugb), _ptr(ggy), _ptr(gx2), _ptr(gw2), n, c, x[0, 0].numel(),
              ctx.groups)
        return ggy, gx2, gw2 if weight is not None else None, None, None, None, None


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, relu: bool, kernels: NativeKernels):
        x = x.contiguous()
        y = torch.empty(*x.shape[:2], *(s // 2 for s in x.shape[2:]), dtype=x.dtype)
        win = torch.empty(y.shape, dtype=torch.uint8)  # where in its window each maximum is
        _call(kernels, "maxpool_forward", x.dtype, _ptr(x), _ptr(y), _ptr(win), *_pool_dims(x), int(relu))
        ctx.save_for_backward(win)
        ctx.in_shape, ctx.kernels = x.shape, kernels
        ctx.mark_non_differentiable(win)
        return y

    @staticmethod
    def backward(ctx, gy):
        (win,) = ctx.saved_tensors
        return _MaxPoolBackward.apply(gy, win, ctx.in_shape, ctx.kernels), None, None


class _MaxPoolBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gy, win, in_shape, kernels: NativeKernels):
        gy = gy.contiguous()
        gx = torch.empty(in_shape, dtype=gy.dtype)
        _call(kernels, "maxpool_route", gy.dtype, _ptr(gy), _ptr(win), _ptr(gx), *_pool_dims(gx), 0)
        ctx.save_for_backward(win)
        ctx.out_shape, ctx.kernels = gy.shape, kernels
        return gx

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx):
        (win,) = ctx.saved_tensors
        ggx = ggx.contiguous()
        ggy = torch.empty(ctx.out_shape, dtype=ggx.dtype)
        _call(ctx.kernels, "maxpool_route", ggx.dtype, _ptr(ggy), _ptr(win), _ptr(ggx), *_pool_dims(ggx), 1)
        return ggy, None, None, None


def _pool_dims(x: torch.Tensor) -> tuple[int, ...]:
    """(planes, spatial dims, size 0, size 1, size 2) of a pooling input (size 2 is 1 in 2D)."""
    spatial = tuple(x.shape[2:])
    return (x.shape[0] * x.shape[1], len(spatial), *spatial, *(1,) * (3 - len(spatial)))


def supported(x: torch.Tensor) -> bool:
    """Whether the C kernels can take `x`: a plain (not a subclass) CPU tensor of float32/64."""
    return type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype in SUFFIX and x.numel() > 0 and x.layout == torch.strided


def group_norm(kernels: NativeKernels, x, groups: int, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    return _GroupNorm.apply(x, weight, bias, groups, eps, kernels)


def max_pool(kernels: NativeKernels, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """2x2 (2D) or 2x2x2 (3D) max-pooling with stride 2, floor mode; with `relu`, the same as
    relu(max_pool(x)) in one pass (gradient included: none where the window's maximum is <= 0)."""
    return _MaxPool.apply(x, relu, kernels)

