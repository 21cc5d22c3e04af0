"""Fused CPU kernels for the backbones' hot paths (`kernels.c`, built by `build.py`, wrapped as
autograd functions in `ops.py`), and the per-machine choice of whether to use them."""

from __future__ import annotations

import warnings
from functools import lru_cache

from common.native.build import NativeKernels, NativeKernelsUnavailable, load_kernels

KERNELS = ("auto", "native", "torch")


def resolve_kernels(choice: str = "auto") -> NativeKernels | None:
    """The C kernels for this machine's `kernels` setting: "native" must load them (the error
    says what to install), "auto" loads them where this machine can build them and otherwise
    falls back to PyTorch's operators with one warning, "torch" never loads them. A site's,
    simulation's or benchmark's own choice, never the federation's: results agree to float
    rounding either way."""
    if choice not in KERNELS:
        raise ValueError(f"kernels={choice!r}: choose one of {', '.join(KERNELS)}")
    if choice == "torch":
        return None
    return _load() if choice == "auto" else load_kernels()


@lru_cache(maxsize=1)
def _load() -> NativeKernels | None:
    try:
        return load_kernels()
    except NativeKernelsUnavailable as error:
        warnings.warn(
            f"fedmeta's fused CPU kernels are unavailable, using PyTorch's operators (about 1.3x slower "
            f"for second-order MAML on CPU): {error}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
