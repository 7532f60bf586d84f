"""Changing an image state's resolution: area averages down, interpolation up, and Gaussian noise kept exact.

- :func:`resize`: a clean image estimate to another size (``"area"``: the mean of each block when shrinking;
  ``"nearest"``, ``"bilinear"`` or ``"bicubic"`` interpolation when enlarging).
- :func:`pooled_noise`: standard normal noise at ``1/k`` of the size from noise ``z`` at full size,
  ``k P_k z`` (``P_k`` the ``k x k`` block mean): each pixel is a sum of ``k^2`` independent standard normals
  divided by ``k``, again standard normal and independent of the others, so the law is kept exactly.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional

UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")


def check_mode(mode: str) -> str:
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample: choose one of {', '.join(UPSAMPLE_MODES)}, got {mode!r} ('bilinear' is usual)")
    return mode


def resize(x: Tensor, size: tuple[int, int], upsample: str = "bilinear") -> Tensor:
    """``x`` (B, C, H, W) at ``size`` (h, w): the block mean where smaller, ``upsample`` interpolation where larger
    (``x`` itself at its own size)."""
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if size[0] <= h and size[1] <= w:
        return functional.interpolate(x, size=size, mode="area")
    if upsample == "nearest":
        return functional.interpolate(x, size=size, mode="nearest")
    return functional.interpolate(x, size=size, mode=upsample, align_corners=False)


def pooled_noise(z: Tensor, factor: int) -> Tensor:
    """``factor * P_factor z``: standard normal noise at ``1/factor`` of the size of ``z`` (module docstring)."""
    return z if factor == 1 else functional.avg_pool2d(z, factor) * factor
