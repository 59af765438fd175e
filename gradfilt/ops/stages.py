"""The stages of the filtered backward: patch sums of the input and of g_y, the two products on the patch
grid, and the spread of grad_x back to full resolution (the compiled passes of :mod:`gradfilt.ops.native`
where they apply, pure PyTorch otherwise). :func:`filtered_backward` runs them for one conv; the patch-grid
blocks (:mod:`gradfilt.patchgrid`) and the latency benchmark call the stages themselves.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

from . import native
from .geometry import Axis, inverse_patch_counts

__all__ = ["patch_mean", "patch_sum", "input_sums", "grad_patch_sums", "patch_grid_grads", "spread_grid",
           "patch_major_grid", "tap_grad", "patch_major_layout", "collapses", "filtered_backward"]


def patch_mean(grad: Tensor, patch_size: int) -> Tensor:
    """Mean of every r x r patch of ``grad`` (anchored top-left; partial patches average what they have).

    Args:
        grad: tensor of shape (N, C, H, W).
        patch_size: r.

    Returns:
        Tensor of shape (N, C, ceil(H / r), ceil(W / r)).
    """
    # Without padding, avg_pool2d's ceil-mode windows divide by the pixels they cover.
    return F.avg_pool2d(grad, patch_size, patch_size, ceil_mode=True)  # (N, C, Hp, Wp)


def patch_sum(x: Tensor, patch_size: int) -> Tensor:
    """Sum of every r x r patch of ``x`` (anchored top-left; partial patches sum what they have).

    Args:
        x: tensor of shape (N, C, H, W).
        patch_size: r.

    Returns:
        Tensor of shape (N, C, ceil(H / r), ceil(W / r)).
    """
    return F.avg_pool2d(x, patch_size, patch_size, ceil_mode=True, divisor_override=1)  # (N, C, Hp, Wp)


def _sample_patch_sums(x: Tensor, axes: tuple[Axis, Axis]) -> Tensor:
    """x~: patch sums of the centre-tap samples x[t*s + offset] over the saved patch range."""
    pads, steps, counts = [], [], []
    for ax in reversed(axes):  # F.pad lists the last axis first
        lo, hi = ax.saved
        start = lo * ax.patch * ax.stride + ax.offset
        count = (hi - lo) * ax.patch
        end = start + (count - 1) * ax.stride + 1
        pads += [-start, end - ax.size_in]  # negative entries crop
        steps.append(ax.stride)
        counts.append(hi - lo)
    xp = F.pad(x, pads)
    samples = xp[:, :, :: steps[1], :: steps[0]]  # (N, C, nh * r, nw * r)
    n, c = x.shape[:2]
    r_h, r_w = axes[0].patch, axes[1].patch
    return samples.reshape(n, c, counts[1], r_h, counts[0], r_w).sum((3, 5))  # (N, C, nh, nw)


def _pad_to_needed(x_sum: Tensor, axes: tuple[Axis, Axis]) -> Tensor:
    """Zero-pad the saved patch sums to the range the patch-grid conv reads."""
    pads = []
    for ax in reversed(axes):
        (need_lo, need_hi), (lo, hi) = ax.needed, ax.saved
        pads += [lo - need_lo, need_hi - hi]
    return F.pad(x_sum, pads)  # (N, C_in, Hq, Wq)


_SMALL_BYTES = 16 * 2**20  # below glibc's mmap threshold: reused heap memory, no fresh page faults
_LARGE_BYTES = 64 * 2**20  # grad_x maps above this (rows >= 64): F.interpolate's kernel beats the tiled copy
_ONEDNN_ROWS = 4096  # patches in the batch from which oneDNN's 1x1 convs beat BLAS in A/B runs (below: fixed costs)
_TINY = 4  # groups with at most this many (C_out / G) x (C_in / G) pairs skip bmm (it loops over groups on CPU)


def _fast_patch_sum(x: Tensor, r: int, out: Tensor) -> Tensor:
    """patch_sum for H and W divisible by r into ``out`` (any strides), as r + r strided adds.

    Faster than avg_pool2d on these shapes.
    """
    cols = x[..., 0::r] + x[..., 1::r] if r > 1 else x  # (N, C, H, W / r)
    for i in range(2, r):
        cols += x[..., i::r]
    if r > 1:
        torch.add(cols[:, :, 0::r], cols[:, :, 1::r], out=out)  # (N, C, H / r, W / r)
    else:
        out.copy_(cols)
    for i in range(2, r):
        out += cols[:, :, i::r]
    return out


def collapses(axes: tuple[Axis, Axis]) -> bool:
    """Both axes collapse (3x3 "same", 1x1 and depthwise convs at any stride ...): the channel-major fast path."""
    return all(ax.mode == "collapse" for ax in axes)


def _onednn(t: Tensor) -> bool:
    """torch runs float32 convs on this CPU tensor with oneDNN."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and torch.backends.mkldnn.is_available() \
        and torch.backends.mkldnn.enabled


def patch_major_layout(t: Tensor, groups: int) -> bool:
    """Whether the patch sums of ``t`` (an input or output map of a conv of ``groups``) are kept patch-major,
    (N, nh, nw, C) memory: ungrouped float32 convs on the CPU, whose grid products then run as oneDNN 1x1
    convs on channels-last maps (:func:`patch_major_grid`, :func:`tap_grad`); otherwise channel-major."""
    return groups == 1 and _onednn(t)


def _onednn_maps(*mats: Tensor) -> Optional[list[Tensor]]:
    """(C, B) matrices as (1, C, 1, B) channels-last maps when oneDNN should run their product as a 1x1 conv:
    all views of patch-major (B, C) memory, float32 on the CPU with oneDNN, and at least ``_ONEDNN_ROWS``
    patches (below, its fixed cost per call loses to BLAS); else None."""
    b = mats[0].shape[1]
    if b < _ONEDNN_ROWS or not all(m.stride(0) == 1 and m.stride(1) == m.shape[0] and _onednn(m) for m in mats):
        return None
    return [m.T.view(1, 1, b, -1).permute(0, 3, 1, 2) for m in mats]


def _grid_sums(x: Tensor, r: int, start: tuple[int, int], counts: tuple[int, int], patch_major: bool) -> Tensor:
    """(N, C, H, W) -> (C, N, nh, nw) sums of the r x r patches starting at ``start`` (clipped to the map).

    Channel-major memory, or with ``patch_major`` a view of (N, nh, nw, C) memory: either way both
    backward GEMMs are one matrix product over the whole batch.
    """
    x = x.contiguous()
    if native.usable(x):
        return native.patch_sums(x, r, start, counts, patch_major=patch_major)
    n, c, h, w = x.shape
    out = native.empty_sums(n, c, counts, x.dtype, x.device, patch_major)  # (C, N, nh, nw)
    pads = [-start[1], start[1] + counts[1] * r - w, -start[0], start[0] + counts[0] * r - h]
    if not any(pads) and x.numel() * x.element_size() // r <= _SMALL_BYTES:
        # strided adds win while their (N, C, H, W / r) intermediate is small; the last ones write the layout
        _fast_patch_sum(x, r, out.transpose(0, 1))
        return out
    if start == (0, 0) and counts == (-(-h // r), -(-w // r)):
        sums = patch_sum(x, r)  # patches tile the map from (0, 0): avg_pool2d's ceil mode clips the last ones
    else:
        sums = patch_sum(F.pad(x, pads), r)  # negative pads crop, positive ones add zeros
    return out.copy_(sums.transpose(0, 1))


@functools.lru_cache(maxsize=256)
def _spread_index(ax: Axis, device: torch.device) -> Tensor:
    return ax.gather_index(device)  # phase * n_patches + patch, per input pixel


@functools.lru_cache(maxsize=256)
def _spread_offsets(ax: Axis, phase_step: int, patch_step: int, device: torch.device) -> Tensor:
    """Element offset of every input pixel's value along one axis of a (phases, patches) grid with these strides."""
    index = _spread_index(ax, device)
    return index // ax.n_patches * phase_step + index % ax.n_patches * patch_step


def _spread(grid: Tensor, axes: tuple[Axis, Axis]) -> Tensor:
    """(N, C, Ph, Hp, Pw, Wp) values per stride phase and patch (any strides) -> (N, C, H_in, W_in).

    Every input pixel takes the value of its stride phase (the kernel taps that reach it) at its patch.
    """
    ax_h, ax_w = axes
    # stride 1, samples from pixel 0, no pixel past the last patch: column w takes patch w // r
    uniform = ax_w.stride == 1 and ax_w.offset == 0 and (ax_w.size_in - 1) // ax_w.patch < ax_w.n_patches
    if native.usable(grid):
        steps = grid.stride()
        rows = _spread_offsets(ax_h, steps[2], steps[3], grid.device)
        cols = _spread_offsets(ax_w, steps[4], steps[5], grid.device)
        return native.spread(grid, rows, cols, (ax_w.patch, steps[5]) if uniform else None)
    n, c = grid.shape[:2]
    grid = grid.reshape(n, c, grid.shape[2] * grid.shape[3], -1)  # (N, C, Ph * Hp, Pw * Wp), a view at stride 1
    idx_h, idx_w = _spread_index(ax_h, grid.device), _spread_index(ax_w, grid.device)
    hp, wp = grid.shape[2:]
    r = ax_h.patch
    if ax_h.stride == 1 and uniform and ax_h.offset == 0 and (ax_h.size_in, ax_w.size_in) == (hp * r, wp * r):
        # nearest upsampling's kernel wins on large maps with long rows (it is slow on short ones)
        if wp * r >= 64 and grid.numel() * r * r * grid.element_size() > _LARGE_BYTES:
            return F.interpolate(grid.contiguous(), scale_factor=r, mode="nearest")  # (N, C, H, W), NCHW
        # small maps: widen each row once, then copy every row r times
        rows = grid[:, :, :, :, None].expand(n, c, hp, wp, r).reshape(n, c, hp, 1, wp * r)  # (N, C, Hp, 1, W)
        out = torch.empty(n, c, hp * r, wp * r, dtype=grid.dtype, device=grid.device)
        out.view(n, c, hp, r, wp * r).copy_(rows.expand(n, c, hp, r, wp * r))  # (N, C, H, W), one full write
        return out
    if uniform:  # partial last patches or strided rows: pick rows by index, then widen and crop
        rows = grid.index_select(2, idx_h)  # (N, C, H, Wp)
        wide = rows[:, :, :, :, None].expand(n, c, ax_h.size_in, wp, r).reshape(n, c, ax_h.size_in, wp * r)
        return wide[:, :, :, : ax_w.size_in]  # (N, C, H, W) view, one full write
    return grid[:, :, idx_h[:, None], idx_w[None, :]]  # (N, C, H, W), one gather


def input_sums(x: Tensor, axes: tuple[Axis, Axis], groups: int = 1) -> Tensor:
    """x~, what the filtered conv's forward keeps for :func:`filtered_backward` (``axes`` from
    :func:`filter_geometry`, ``groups`` the conv's): (C_in, N, nh, nw) on the collapse path (channel-major
    memory, or patch-major for an ungrouped stride-1 float32 conv on the CPU), else (N, C_in, nh, nw)."""
    if not collapses(axes):
        return _sample_patch_sums(x, axes)
    if any(ax.stride > 1 for ax in axes):
        return _sample_patch_sums(x, axes).transpose(0, 1).contiguous()  # (C_in, N, nh, nw)
    # stride 1: sample t of a patch row is pixel t + offset; patches past the map's edge hold zeros
    return _grid_sums(x, axes[0].patch, (axes[0].offset, axes[1].offset), (axes[0].n_patches, axes[1].n_patches),
                      patch_major_layout(x, groups))


def grad_patch_sums(grad_y: Tensor, axes: tuple[Axis, Axis], groups: int = 1) -> Tensor:
    """Stage 1 of the collapsed backward: the r x r patch sums of g_y, (C_out, N, Hp, Wp).

    Args:
        grad_y: (N, C_out, H_out, W_out).
        axes: the conv's geometry (:func:`filter_geometry`).
        groups: the conv's; an ungrouped conv's float32 sums on the CPU are a view of patch-major
            (N, Hp, Wp, C_out) memory, as :func:`input_sums` keeps x~, otherwise channel-major.
    """
    return _grid_sums(grad_y, axes[0].patch, (0, 0), (axes[0].n_patches, axes[1].n_patches),
                      patch_major_layout(grad_y, groups))


def patch_grid_grads(g_sum: Tensor, x_sum: Optional[Tensor], weight: Optional[Tensor], axes: tuple[Axis, Axis],
                     groups: int, x_shape: Sequence[int], weight_shape: Sequence[int], need_x: bool, need_w: bool,
                     need_b: bool) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Stages 2-3 of the collapsed backward: both gradients on the patch grid, from the patch sums of g_y.

    Every kernel collapses to one tap per stride phase, so with the B = N * Hp * Wp patches of
    the batch as columns (g~y as G: (C_out, B), x~ as X: (C_in, B), channel-major or patch-major memory):
    grad_w[co, ci, :, :] = (G X^T)[co, ci], and grad_x~ = theta~^T G per phase pair, theta~ =
    the sum of the kernel taps that reach that phase (the whole kernel at stride 1); one GEMM
    each per group, all phases at once. grad_x~ comes out patch-major, (B, C_in), for ungrouped
    stride-1 convs (the faster GEMM there) and channel-major, (C_in, B), otherwise (one GEMM for
    all stride phases, contiguous grid rows for the spread).

    Args:
        g_sum: patch sums of g_y, (C_out, N, Hp, Wp) (:func:`grad_patch_sums`), channel-major or a view of
            patch-major (N, Hp, Wp, C_out) memory; scaled in place when the output map has partial patches.
            With both g_sum and x_sum patch-major (:func:`patch_major_layout`), grad_w is :func:`tap_grad`'s
            oneDNN product.
        x_sum, weight, axes, groups, x_shape, weight_shape, need_x, need_w, need_b: as :func:`filtered_backward`.

    Returns:
        (grad_x~, grad_w, grad_b): grad_x~ per stride phase and patch, (N, C_in, Ph, Hp, Pw, Wp) (any strides);
        :func:`spread_grid` writes it at full resolution.
    """
    c_out, n, hp, wp = g_sum.shape
    r = axes[0].patch
    h_out, w_out = axes[0].size_out, axes[1].size_out
    grad_b = g_sum.sum((1, 2, 3)) if need_b else None  # patch sums keep every total: exact
    if h_out % r == 0 and w_out % r == 0:
        g_mean, scale = g_sum, 1.0 / (r * r)  # the mean's 1 / r^2 goes on the small GEMM operands
    else:  # partial edge patches average the pixels they have
        g_mean, scale = g_sum.mul_(inverse_patch_counts(h_out, w_out, r, g_sum.dtype, g_sum.device)), 1.0
    c_out_g, c_in_g = weight_shape[0] // groups, weight_shape[1]
    # (G, C_out / G, B): a view both for channel-major g_sum and for a patch-major one (a chain's grids)
    g = g_mean.reshape(groups, c_out_g, n * hp * wp)
    grid = grad_w = None
    if need_w:
        xs = x_sum.view(groups, c_in_g, n * hp * wp)  # (G, C_in / G, B)
        if groups == 1:
            grad_tap = tap_grad(g[0], xs[0])  # (C_out, C_in)
        elif c_out_g * c_in_g <= _TINY:  # depthwise: broadcast products, not one tiny GEMM per group
            grad_tap = (g[:, :, None, :] * xs[:, None, :, :]).sum(3)  # (G, C_out / G, C_in / G)
        else:
            grad_tap = torch.bmm(g, xs.transpose(1, 2))  # (G, C_out / G, C_in / G)
        grad_w = _repeat_taps(grad_tap, weight_shape, scale)
    if need_x:
        grid = _grid_input_grad(g, weight, axes, groups, x_shape[1], scale, (n, hp, wp))
    return grid, grad_w, grad_b


def _grid_input_grad(g: Tensor, weight: Tensor, axes: tuple[Axis, Axis], groups: int, c_in: int, scale: float,
                     grid: tuple[int, int, int]) -> Tensor:
    """grad_x~ per stride phase and patch, (N, C_in, Ph, Hp, Pw, Wp), from g~y as (G, C_out / G, B) and the weight:
    theta~^T G per phase pair, theta~ the (``scale``d) sum of the kernel taps that reach that phase."""
    n, hp, wp = grid
    c_out, c_in_g = weight.shape[:2]
    c_out_g = c_out // groups
    phases = (axes[0].n_phases, axes[1].n_phases)
    weight = weight.contiguous()
    if phases != (1, 1):  # theta~ per stride phase pair: the taps that reach pixels of that phase
        tap_h, tap_w = axes[0].tap_matrix(weight)[:, 0], axes[1].tap_matrix(weight)[:, 0]  # (Ph, kh), (Pw, kw)
        theta = torch.einsum("au,bv,ocuv->aboc", tap_h, tap_w, weight).mul_(scale)  # (Ph, Pw, C_out, C_in / G)
    else:
        theta = _kernel_sums(weight, scale).view(1, 1, c_out, c_in_g)  # (1, 1, C_out, C_in / G)
    n_ph = phases[0] * phases[1]
    if groups == 1 and n_ph == 1:
        grid = patch_major_grid(g[0], theta.view(c_out, c_in_g), n, hp, wp)  # (N, C_in, 1, Hp, 1, Wp)
    else:
        # channel-major grad_x~, all stride phases in one GEMM: its rows are the grid rows the spread widens
        theta_t = theta.view(*phases, groups, c_out_g, c_in_g)  # (Ph, Pw, G, C_out/G, C_in/G)
        theta_t = theta_t.permute(2, 4, 0, 1, 3)  # (G, C_in/G, Ph, Pw, C_out/G)
        theta_t = theta_t.reshape(groups, c_in_g * n_ph, c_out_g)  # (G, (C_in/G, Ph, Pw), C_out/G)
        if groups == 1:
            grid = torch.mm(theta_t[0], g[0])[None]  # (1, (C_in, Ph, Pw), B)
        elif c_out_g * c_in_g <= _TINY:
            grid = (theta_t[:, :, :, None] * g[:, None, :, :]).sum(2)  # (G, (C_in / G, Ph, Pw), B)
        else:
            grid = torch.bmm(theta_t, g)  # (G, (C_in / G, Ph, Pw), B)
        grid = grid.view(c_in, *phases, n, hp, wp).permute(3, 0, 1, 4, 2, 5)  # (N, C_in, Ph, Hp, Pw, Wp)
    return grid


def spread_grid(grid: Tensor, axes: tuple[Axis, Axis]) -> Tensor:
    """Stage 4 of the collapsed backward: grad_x at full resolution from :func:`patch_grid_grads`' grid.

    Every input pixel takes the value of its stride phase (the kernel taps that reach it) at its patch.

    Args:
        grid: (N, C_in, Ph, Hp, Pw, Wp).
        axes: the conv's geometry.

    Returns:
        (N, C_in, H_in, W_in).
    """
    return _spread(grid, axes)


def _collapse_backward(grad_y: Tensor, x_sum: Optional[Tensor], weight: Optional[Tensor], axes: tuple[Axis, Axis],
                       groups: int, x_shape: torch.Size, weight_shape: torch.Size, need_x: bool, need_w: bool,
                       need_b: bool, grid_output: bool = False):
    """Backward when both axes collapse (3x3 "same", 1x1 and depthwise convs, at any stride): g_y is read
    once (patch sums), both gradients come from two GEMMs on the patch grid, grad_x is written once."""
    g_sum = grad_patch_sums(grad_y, axes, groups)  # (C_out, N, Hp, Wp)
    grid, grad_w, grad_b = patch_grid_grads(g_sum, x_sum, weight, axes, groups, x_shape, weight_shape, need_x,
                                            need_w, need_b)
    grad_x = None
    if need_x:  # (N, C_in, H, W), or the patch grid itself (N, C_in, Hp, Wp): one phase, every pixel its patch's value
        grad_x = grid[:, :, 0, :, 0, :] if grid_output else _spread(grid, axes)
    return grad_x, grad_w, grad_b


def _kernel_sums(weight: Tensor, scale: float) -> Tensor:
    """theta~ = scale * the spatial sum of every kernel, (C_out, C_in / G)."""
    if native.usable(weight):
        return native.kernel_sums(weight, scale)
    return weight.sum((2, 3)).mul_(scale)


def _repeat_taps(grad_tap: Tensor, weight_shape: torch.Size, scale: float) -> Tensor:
    """The weight gradient of a collapsed kernel: scale * grad_tap at every tap, contiguous ``weight_shape``."""
    if native.usable(grad_tap):
        return native.repeat_taps(grad_tap, weight_shape, scale)
    return grad_tap.mul(scale).reshape(*weight_shape[:2], 1, 1).expand(weight_shape).contiguous()


def patch_major_grid(g: Tensor, theta: Tensor, n: int, hp: int, wp: int) -> Tensor:
    """grad_x~ of an ungrouped stride-1 conv as the spread's grid: G^T theta~ from G (C_out, B), theta~ (C_out, C_in).

    Patch-major (B, C_in): on the Table 10 shapes this product runs faster than the channel-major
    theta~^T G; the spread then reads each grid row at a stride of C_in. When G is itself a view of
    patch-major memory (a chain's grids, and the patch sums :func:`patch_major_layout` keeps patch-major),
    oneDNN runs float32 convs on the CPU and the batch has many
    patches, the product is a 1x1 conv on channels-last maps, which oneDNN runs faster than BLAS runs the
    matrix product (on few patches its fixed cost per call makes it slower).

    Args:
        g: (C_out, B), B = (N, Hp, Wp), any strides.
        theta: (C_out, C_in).
        n, hp, wp: the batch and the patch grid.

    Returns:
        (N, C_in, 1, Hp, 1, Wp), a view of patch-major (B, C_in) memory.
    """
    maps = _onednn_maps(g)
    if maps is not None:
        out = F.conv2d(maps[0], theta.T.contiguous()[:, :, None, None])  # (1, C_in, 1, B), channels-last
        grid = out.permute(0, 2, 3, 1).reshape(g.shape[1], -1)  # (B, C_in), a view
    else:
        grid = torch.mm(g.T, theta)  # (B, C_in)
    return grid.view(n, hp, wp, -1).permute(0, 3, 1, 2)[:, :, None, :, None, :]  # (N, C_in, 1, Hp, 1, Wp)


def tap_grad(g: Tensor, x_sum: Tensor) -> Tensor:
    """The weight gradient of one collapsed tap, G X^T, from G (C_out, B) and X (C_in, B), any strides.

    When both are views of patch-major memory (:func:`input_sums` and :func:`grad_patch_sums` of an
    ungrouped float32 conv on the CPU), oneDNN runs float32 convs and the batch has many patches, this
    is the weight gradient of a 1x1 conv on channels-last maps, which oneDNN runs faster than BLAS runs
    the matrix product; otherwise the matrix product.
    """
    maps = _onednn_maps(g, x_sum)
    if maps is not None:
        return conv2d_weight(maps[1], (g.shape[0], x_sum.shape[0], 1, 1), maps[0]).view(g.shape[0], -1)
    return torch.mm(g, x_sum.T)


def _dilated_input_grad(g_mean: Tensor, weight: Tensor, axes: tuple[Axis, Axis], groups: int,
                        x_shape: Sequence[int]) -> Tensor:
    """grad_x of a filtered conv with an axis in grid mode: the transposed patch-grid conv of g~y (dilation d / r),
    one per stride phase pair, spread to full resolution, (N, C_in, H, W)."""
    ax_h, ax_w = axes
    grid_dilation = (ax_h.grid_dilation, ax_w.grid_dilation)
    n, c_in = x_shape[:2]
    grid_shape = (n, c_in, ax_h.needed[1] - ax_h.needed[0], ax_w.needed[1] - ax_w.needed[0])
    # theta~ per stride phase: the sum of the taps that reach its pixels, (Ph, Pw, C_out, C_in/g, kh', kw')
    phase_kernels = torch.einsum(
        "aiu,bjv,ocuv->abocij", ax_h.tap_matrix(weight), ax_w.tap_matrix(weight), weight
    )
    # grad_x on the patch grid = transposed patch-grid conv of g~y, one per phase pair
    per_phase = torch.stack(
        [
            torch.stack(
                [
                    conv2d_input(grid_shape, phase_kernels[a, b], g_mean,
                                 dilation=grid_dilation, groups=groups)
                    for b in range(ax_w.n_phases)
                ],
                dim=3,
            )
            for a in range(ax_h.n_phases)
        ],
        dim=2,
    )  # (N, C_in, Ph, Hq, Pw, Wq)
    flat = per_phase.reshape(
        n, c_in, ax_h.n_phases * grid_shape[2], ax_w.n_phases * grid_shape[3]
    )  # (N, C_in, Ph * Hq, Pw * Wq)
    # every input pixel takes its phase's value at its patch: (N, C_in, H, W)
    grad_x = flat.index_select(2, ax_h.gather_index(flat.device)).index_select(
        3, ax_w.gather_index(flat.device)
    )
    return grad_x


def filtered_backward(grad_y: Tensor, x_sum: Optional[Tensor], weight: Optional[Tensor], axes: tuple[Axis, Axis],
                      groups: int, x_shape: Sequence[int], weight_shape: Sequence[int], need_x: bool, need_w: bool,
                      need_b: bool, grid_output: bool = False
                      ) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(grad_x, grad_w, grad_b) of a filtered conv from g_y, the kept input sums x~ and the weight.

    Works on any subset of output channels: give ``grad_y``, ``weight`` and ``weight_shape`` for
    those channels only (error-map pruning runs the filter on the channels it keeps this way).
    ``grid_output``: grad_x on the patch grid, (N, C_in, Hp, Wp), instead of spread to full resolution
    (on a stride-1 conv whose kernel collapses, every input pixel takes its patch's value, so the grid
    is the whole of grad_x; the work of a backward that hands the grid on). Other geometries refuse it.
    """
    ax_h, ax_w = axes
    if grid_output and not (collapses(axes) and ax_h.n_phases == ax_w.n_phases == 1):
        raise ValueError("grad_x on the patch grid needs a conv whose kernel collapses with one stride phase "
                         "(stride 1, dilation < patch size)")
    if collapses(axes):
        return _collapse_backward(grad_y, x_sum, weight, axes, groups, x_shape, weight_shape, need_x, need_w, need_b,
                                  grid_output)
    g_mean = patch_mean(grad_y, ax_h.patch)  # g~y's unique values, (N, C_out, Hp, Wp)
    grid_dilation = (ax_h.grid_dilation, ax_w.grid_dilation)
    grad_x = grad_w = grad_b = None

    if need_b:
        grad_b = grad_y.sum((0, 2, 3))  # exact: the patch means keep every patch's total

    if need_w:
        x_grid = _pad_to_needed(x_sum, axes)  # (N, C_in, Hq, Wq)
        c_out, c_in_g = weight_shape[:2]
        # grad_w[co, ci, u, v] = sum_{n, P} g~y[n, co, P] * x~[n, ci, P + tap shift]; on the patch grid this
        # is the weight gradient of a conv with dilation d / r (kept taps) or a 1-tap kernel (collapsed axis).
        grad_kept = conv2d_weight(
            x_grid, (c_out, c_in_g, ax_h.kept_taps, ax_w.kept_taps), g_mean,
            dilation=grid_dilation, groups=groups,
        )  # (C_out, C_in / g, kh', kw')
        grad_w = grad_kept.expand(weight_shape).contiguous()  # a collapsed axis repeats over its taps

    if need_x:
        grad_x = _dilated_input_grad(g_mean, weight, axes, groups, x_shape)

    return grad_x, grad_w, grad_b
