"""Optional compiled passes of the filtered backward (``gradfilt/ops/_kernels.cpp``), with checks.

The package build compiles ``gradfilt.ops._kernels`` (C++ / OpenMP, Python C API only). When it
is missing (a build without a compiler, ``GRADFILT_NO_KERNELS=1``) or a tensor is not a CPU
float32 / float64 tensor, :func:`usable` is False and :mod:`gradfilt.ops.stages` runs its
pure-PyTorch versions instead; the tests compare the two.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

try:
    if os.environ.get("GRADFILT_NO_KERNELS", "") not in ("", "0"):
        raise ImportError("disabled by GRADFILT_NO_KERNELS")
    from gradfilt.ops import _kernels
except ImportError:
    _kernels = None

__all__ = ["available", "usable", "has_avx512", "empty_sums", "patch_sums", "spread", "kernel_sums", "repeat_taps"]

_DTYPES = {torch.float32: 0, torch.float64: 1}


def available() -> bool:
    """True when the compiled kernels were built and loaded."""
    return _kernels is not None


def usable(*tensors: Tensor) -> bool:
    """True when the compiled kernels can run on all ``tensors`` (CPU, float32 / float64)."""
    return _kernels is not None and all(t.device.type == "cpu" and t.dtype in _DTYPES for t in tensors)


def has_avx512() -> bool:
    """True when the compiled patch sums can use their AVX-512 loops (float32, r = 4) on this CPU."""
    return _kernels is not None and _kernels.has_avx512()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def empty_sums(n: int, c: int, counts: tuple[int, int], dtype: torch.dtype, device: torch.device,
               patch_major: bool) -> Tensor:
    """Uninitialised patch sums of an (N, C, H, W) map, indexed (C, N, counts[0], counts[1]): contiguous
    (channel-major), or with ``patch_major`` a permuted view of contiguous (N, counts[0], counts[1], C)."""
    if patch_major:
        return torch.empty(n, *counts, c, dtype=dtype, device=device).permute(3, 0, 1, 2)
    return torch.empty(c, n, *counts, dtype=dtype, device=device)


def patch_sums(x: Tensor, patch_size: int, start: tuple[int, int], counts: tuple[int, int],
               simd: bool = True, patch_major: bool = False) -> Tensor:
    """Patch sums of ``x``, laid out for one GEMM over the batch.

    Patch (ph, pw) covers rows [start[0] + ph * r, start[0] + (ph + 1) * r) and columns
    [start[1] + pw * r, ...) of x, clipped to the map (outside pixels count as zeros).

    Args:
        x: contiguous (N, C, H, W) CPU float32 / float64 tensor.
        patch_size: r >= 1.
        start: first row and column of patch (0, 0) (may be negative).
        counts: patches along height and width.
        simd: allow the AVX-512 loops where they apply (:func:`has_avx512`); both give the same bits.
        patch_major: write (N, nh, nw, C) memory (every patch's channels side by side) instead of (C, N, nh, nw).

    Returns:
        (C, N, counts[0], counts[1]): contiguous, or with ``patch_major`` a permuted view of contiguous
        (N, counts[0], counts[1], C); the same values either way.
    """
    _check(usable(x) and x.dim() == 4 and x.is_contiguous(), "patch_sums needs a contiguous 4-D CPU float tensor")
    _check(patch_size >= 1 and min(counts) >= 0, f"bad patch_size {patch_size} or counts {counts}")
    n, c, h, w = x.shape
    out = empty_sums(n, c, counts, x.dtype, x.device, patch_major)  # (C, N, nh, nw)
    if out.numel():
        p = counts[0] * counts[1]
        _kernels.patch_sums(_DTYPES[x.dtype], x.data_ptr(), out.data_ptr(), n * c, c, h, w, patch_size,
                            start[0], counts[0], start[1], counts[1], p, n * p, torch.get_num_threads(), simd,
                            patch_major)
    return out


def spread(grid: Tensor, row_offsets: Tensor, col_offsets: Tensor, widen: Optional[tuple[int, int]]) -> Tensor:
    """out[n, c, h, w] = grid's element at n * grid.stride(0) + c * grid.stride(1) + row_offsets[h] + col_offsets[w].

    Every pixel takes the value of its patch (and, for a strided conv, of its stride phase);
    the offsets say where that value lies relative to the (n, c) plane of the grid.

    Args:
        grid: CPU float32 / float64 tensor whose first two dims are (N, C); any further dims and strides.
        row_offsets: int64 (H,) element offset of every output row's values, >= 0.
        col_offsets: int64 (W,) element offset of every output column's value, >= 0.
        widen: (r, step) when col_offsets[w] == (w // r) * step for every w (a faster widening), else None.

    Returns:
        Contiguous (N, C, H, W).

    Raises:
        ValueError: a bad grid or offset tensor, a read outside the grid's storage, or col_offsets
            breaking the widen promise (checked in C before anything is written).
    """
    _check(usable(grid) and grid.dim() >= 2 and min(grid.stride()[:2]) >= 0,
           "spread needs a CPU float grid (N, C, ...)")
    for offsets, name in ((row_offsets, "row_offsets"), (col_offsets, "col_offsets")):
        _check(offsets.dtype == torch.int64 and offsets.dim() == 1 and offsets.is_contiguous()
               and offsets.device.type == "cpu", f"{name} must be a contiguous 1-D int64 CPU tensor")
    n, c = grid.shape[:2]
    h, w = row_offsets.numel(), col_offsets.numel()
    out = torch.empty(n, c, h, w, dtype=grid.dtype)  # (N, C, H, W)
    if out.numel() == 0:
        return out
    r, step = widen or (0, 0)
    _check(widen is None or r >= 1, f"widen needs r >= 1, got {r}")
    # the C side checks that every read lies in the grid's storage and the widening promise, before writing
    available = grid.untyped_storage().nbytes() // grid.element_size() - grid.storage_offset()
    _kernels.spread(_DTYPES[grid.dtype], grid.data_ptr(), available, out.data_ptr(), n * c, c, h, w, grid.stride(0),
                    grid.stride(1), row_offsets.data_ptr(), col_offsets.data_ptr(), r, step, torch.get_num_threads())
    return out


def kernel_sums(weight: Tensor, scale: float) -> Tensor:
    """theta~: scale * the spatial sum of every (output, input) kernel of a conv weight.

    Args:
        weight: contiguous (C_out, C_in / G, kh, kw) CPU float32 / float64 tensor.
        scale: factor applied to every sum.

    Returns:
        Contiguous (C_out, C_in / G).
    """
    _check(usable(weight) and weight.dim() == 4 and weight.is_contiguous(), "kernel_sums needs a contiguous 4-D weight")
    c_out, c_in_g, kh, kw = weight.shape
    out = torch.empty(c_out, c_in_g, dtype=weight.dtype)  # (C_out, C_in / G)
    _kernels.kernel_sums(_DTYPES[weight.dtype], weight.data_ptr(), out.data_ptr(), c_out * c_in_g, kh * kw,
                         float(scale), torch.get_num_threads())
    return out


def repeat_taps(tap: Tensor, weight_shape: torch.Size, scale: float) -> Tensor:
    """The weight gradient of a collapsed kernel: every tap gets scale * tap.

    Args:
        tap: contiguous CPU float32 / float64 tensor of C_out * C_in / G values, ordered as (C_out, C_in / G).
        weight_shape: (C_out, C_in / G, kh, kw).
        scale: factor applied to every value.

    Returns:
        Contiguous tensor of ``weight_shape``.
    """
    c_out, c_in_g, kh, kw = weight_shape
    _check(usable(tap) and tap.is_contiguous() and tap.numel() == c_out * c_in_g,
           f"repeat_taps needs {c_out * c_in_g} contiguous CPU float values, got {tuple(tap.shape)}")
    out = torch.empty(weight_shape, dtype=tap.dtype)  # (C_out, C_in / G, kh, kw)
    _kernels.repeat_taps(_DTYPES[tap.dtype], tap.data_ptr(), out.data_ptr(), c_out * c_in_g, kh * kw, float(scale),
                         torch.get_num_threads())
    return out
