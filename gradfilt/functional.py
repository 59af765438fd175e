"""Functional form of the gradient-filtered 2-D convolution.

The forward pass is exactly ``F.conv2d``. The backward pass replaces the output
gradient g_y by g~y, its r x r patch means (patches anchored top-left, a partial
last patch averages only the pixels it has), and computes both gradients on the
coarse patch grid, as in Yang, Li & Marculescu (CVPR 2023). Forward therefore
keeps only the patch sums x~ of the input, never the input itself.

Every spatial axis is handled in one of two modes, chosen from
(stride s, dilation d, patch size r):

* ``collapse`` (d < r, or s > 1): all taps of that axis read the same patch, so
  the kernel collapses to a sum along it. The patch sums are taken over the
  centre-tap samples x[t*s + offset], offset = c*d - pad, c = (k - 1) // 2
  (x[t*s] for a "same" conv), and the weight gradient is the same for every tap
  of the axis. For grad_x each input pixel a only receives the taps u that can
  reach it, i.e. those with (a + pad - u*d) % s == 0 ("stride phase"), so a
  stride-s layer uses one kernel sum per phase instead of smearing all taps
  over every pixel. A 1x1 conv at any stride is therefore exactly the backward
  of the convolution fed with g~y.
* ``grid`` (s == 1 and d >= r, which requires r | d): a tap shifted by
  (u - c)*d pixels moves by exactly (u - c)*d/r patches, so on the patch grid
  the layer is a conv with dilation d/r. Its filtered backward is the exact
  backward of that patch-grid conv (per-tap weight gradients, a transposed conv
  for grad_x). With r = 1 this is the exact conv backward.

Limits: strided convs with dilation >= r > 1 are rejected (no model we target
has one); only zero padding; no double backward. Boundary effects follow the
paper's "each patch padded sufficiently" approximation: in collapse mode an
input pixel whose centre output lies outside the output map takes the nearest
patch's value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight

from gradfilt import _native

IntPair = Union[int, Sequence[int]]

__all__ = ["filtered_conv2d", "filtered_backward", "filter_geometry", "input_sums", "patch_mean", "patch_sum",
           "check_patch_size", "axis_modes", "grad_patch_sums", "patch_grid_grads", "spread_grid", "patch_counts",
           "patch_major_grid", "tap_grad", "patch_major_layout"]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value  # type: ignore[return-value]


def check_patch_size(patch_size: int) -> int:
    """Return ``patch_size`` if it is a valid r (an int >= 1), else raise ValueError.

    Args:
        patch_size: the paper's r, side of the square patches of g_y.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be an int >= 1, got {patch_size!r}")
    return patch_size


def _axis_mode(stride: int, dilation: int, patch_size: int, axis: str) -> str:
    """Choose 'grid' or 'collapse' for one axis (see the module docstring)."""
    if stride == 1 and dilation >= patch_size:
        if dilation % patch_size:
            valid = [r for r in range(1, dilation + 1) if dilation % r == 0]
            raise ValueError(
                f"dilation {dilation} ({axis}) is not divisible by patch_size {patch_size}: "
                f"on the patch grid a dilated conv needs patch_size to divide the dilation; "
                f"valid patch sizes for this layer are {valid} or any value > {dilation}"
            )
        return "grid"
    if stride > 1 and 1 < dilation and dilation >= patch_size:
        raise ValueError(
            f"a conv with stride {stride} and dilation {dilation} ({axis}) is not supported with "
            f"patch_size {patch_size}; use a patch_size > {dilation}"
        )
    return "collapse"


def axis_modes(stride: IntPair, dilation: IntPair, patch_size: int) -> tuple[str, str]:
    """Validate a conv geometry for filtering and return the (height, width) modes.

    Args:
        stride: conv stride.
        dilation: conv dilation.
        patch_size: the paper's r.

    Returns:
        A pair of 'grid' / 'collapse', one per spatial axis.
    """
    check_patch_size(patch_size)
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    return (_axis_mode(sh, dh, patch_size, "height"), _axis_mode(sw, dw, patch_size, "width"))


def _left_padding(padding: Union[str, IntPair], kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Padding before the first pixel on each axis, as F.conv2d applies it."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":  # torch puts the odd pixel of the total padding at the end
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))  # type: ignore[return-value]
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return _pair(padding, "padding")


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


@dataclass(frozen=True)
class _Axis:
    """Geometry of one spatial axis of a filtered conv, for one input size."""

    size_in: int
    size_out: int
    kernel: int
    stride: int
    pad: int  # padding before the first pixel
    dilation: int
    patch: int
    mode: str  # 'grid' or 'collapse'

    @property
    def centre(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def offset(self) -> int:
        """Input position of the centre tap of output 0 (output t reads x[t*s + offset])."""
        return self.centre * self.dilation - self.pad

    @property
    def n_patches(self) -> int:
        return -(-self.size_out // self.patch)

    @property
    def grid_dilation(self) -> int:
        return self.dilation // self.patch if self.mode == "grid" else 1

    @property
    def kept_taps(self) -> int:
        return self.kernel if self.mode == "grid" else 1

    @property
    def needed(self) -> tuple[int, int]:
        """Patch range [lo, hi) that the backward's patch-grid conv reads."""
        if self.mode == "collapse":
            return (0, self.n_patches)
        m = self.grid_dilation
        return (-self.centre * m, self.n_patches + (self.kernel - 1 - self.centre) * m)

    @property
    def saved(self) -> tuple[int, int]:
        """Patch range [lo, hi) kept from forward: the needed patches that hold real input pixels."""
        lo, hi = self.needed
        if self.mode == "collapse":
            return (lo, hi)
        # grid mode has stride 1: sample t sits at pixel t + offset
        first = -self.offset // self.patch
        last = (self.size_in - 1 - self.offset) // self.patch
        return (max(lo, first), min(hi, last + 1))

    @property
    def n_phases(self) -> int:
        return self.stride if self.mode == "collapse" else 1

    def tap_matrix(self, like: Tensor) -> Tensor:
        """(phases, kept_taps, kernel) 0/1 map from the kernel's taps to the backward's taps.

        Collapse: phase p sums the taps u with u*d % s == p, the only ones that reach an input
        pixel a with (a + pad) % s == p. Grid: one phase, identity.
        """
        if self.mode == "grid":
            return torch.eye(self.kernel, dtype=like.dtype, device=like.device).unsqueeze(0)
        taps = torch.arange(self.kernel, device=like.device) * self.dilation % self.stride
        phases = torch.arange(self.stride, device=like.device)
        return (taps[None, :] == phases[:, None]).to(like.dtype).unsqueeze(1)  # (s, 1, k)

    def gather_index(self, device: torch.device) -> Tensor:
        """For each input pixel, its row in the (phases * needed patches) backward grid."""
        a = torch.arange(self.size_in, device=device)
        lo, hi = self.needed
        if self.mode == "grid":
            # pixel a is the centre sample of (virtual) output a - offset
            return torch.div(a - self.offset, self.patch, rounding_mode="floor") - lo
        centre_out = torch.div(a - self.offset, self.stride, rounding_mode="floor")
        patch = torch.div(centre_out, self.patch, rounding_mode="floor").clamp(0, self.n_patches - 1)
        phase = (a + self.pad) % self.stride
        return phase * (hi - lo) + patch - lo


def _sample_patch_sums(x: Tensor, axes: tuple[_Axis, _Axis]) -> Tensor:
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


def _pad_to_needed(x_sum: Tensor, axes: tuple[_Axis, _Axis]) -> Tensor:
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


def _collapse_path(axes: tuple[_Axis, _Axis]) -> bool:
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
    if _native.usable(x):
        return _native.patch_sums(x, r, start, counts, patch_major=patch_major)
    n, c, h, w = x.shape
    out = _native.empty_sums(n, c, counts, x.dtype, x.device, patch_major)  # (C, N, nh, nw)
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
def _spread_index(ax: _Axis, device: torch.device) -> Tensor:
    return ax.gather_index(device)  # phase * n_patches + patch, per input pixel


@functools.lru_cache(maxsize=256)
def _spread_offsets(ax: _Axis, phase_step: int, patch_step: int, device: torch.device) -> Tensor:
    """Element offset of every input pixel's value along one axis of a (phases, patches) grid with these strides."""
    index = _spread_index(ax, device)
    return index // ax.n_patches * phase_step + index % ax.n_patches * patch_step


def _spread(grid: Tensor, axes: tuple[_Axis, _Axis]) -> Tensor:
    """(N, C, Ph, Hp, Pw, Wp) values per stride phase and patch (any strides) -> (N, C, H_in, W_in).

    Every input pixel takes the value of its stride phase (the kernel taps that reach it) at its patch.
    """
    ax_h, ax_w = axes
    # stride 1, samples from pixel 0, no pixel past the last patch: column w takes patch w // r
    uniform = ax_w.stride == 1 and ax_w.offset == 0 and (ax_w.size_in - 1) // ax_w.patch < ax_w.n_patches
    if _native.usable(grid):
        steps = grid.stride()
        rows = _spread_offsets(ax_h, steps[2], steps[3], grid.device)
        cols = _spread_offsets(ax_w, steps[4], steps[5], grid.device)
        return _native.spread(grid, rows, cols, (ax_w.patch, steps[5]) if uniform else None)
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


def input_sums(x: Tensor, axes: tuple[_Axis, _Axis], groups: int = 1) -> Tensor:
    """x~, what the filtered conv's forward keeps for :func:`filtered_backward` (``axes`` from
    :func:`filter_geometry`, ``groups`` the conv's): (C_in, N, nh, nw) on the collapse path (channel-major
    memory, or patch-major for an ungrouped stride-1 float32 conv on the CPU), else (N, C_in, nh, nw)."""
    if not _collapse_path(axes):
        return _sample_patch_sums(x, axes)
    if any(ax.stride > 1 for ax in axes):
        return _sample_patch_sums(x, axes).transpose(0, 1).contiguous()  # (C_in, N, nh, nw)
    # stride 1: sample t of a patch row is pixel t + offset; patches past the map's edge hold zeros
    return _grid_sums(x, axes[0].patch, (axes[0].offset, axes[1].offset), (axes[0].n_patches, axes[1].n_patches),
                      patch_major_layout(x, groups))


def grad_patch_sums(grad_y: Tensor, axes: tuple[_Axis, _Axis], groups: int = 1) -> Tensor:
    """Stage 1 of the collapsed backward: the r x r patch sums of g_y, (C_out, N, Hp, Wp).

    Args:
        grad_y: (N, C_out, H_out, W_out).
        axes: the conv's geometry (:func:`filter_geometry`).
        groups: the conv's; an ungrouped conv's float32 sums on the CPU are a view of patch-major
            (N, Hp, Wp, C_out) memory, as :func:`input_sums` keeps x~, otherwise channel-major.
    """
    return _grid_sums(grad_y, axes[0].patch, (0, 0), (axes[0].n_patches, axes[1].n_patches),
                      patch_major_layout(grad_y, groups))


def patch_grid_grads(g_sum: Tensor, x_sum: Optional[Tensor], weight: Optional[Tensor], axes: tuple[_Axis, _Axis],
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
        g_mean, scale = g_sum.mul_(_inverse_counts(h_out, w_out, r, g_sum.dtype, g_sum.device)), 1.0
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
            grid = grid.view(x_shape[1], *phases, n, hp, wp).permute(3, 0, 1, 4, 2, 5)  # (N, C_in, Ph, Hp, Pw, Wp)
    return grid, grad_w, grad_b


def spread_grid(grid: Tensor, axes: tuple[_Axis, _Axis]) -> Tensor:
    """Stage 4 of the collapsed backward: grad_x at full resolution from :func:`patch_grid_grads`' grid.

    Every input pixel takes the value of its stride phase (the kernel taps that reach it) at its patch.

    Args:
        grid: (N, C_in, Ph, Hp, Pw, Wp).
        axes: the conv's geometry.

    Returns:
        (N, C_in, H_in, W_in).
    """
    return _spread(grid, axes)


def _collapse_backward(grad_y: Tensor, x_sum: Optional[Tensor], weight: Optional[Tensor], axes: tuple[_Axis, _Axis],
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
    if _native.usable(weight):
        return _native.kernel_sums(weight, scale)
    return weight.sum((2, 3)).mul_(scale)


def _repeat_taps(grad_tap: Tensor, weight_shape: torch.Size, scale: float) -> Tensor:
    """The weight gradient of a collapsed kernel: scale * grad_tap at every tap, contiguous ``weight_shape``."""
    if _native.usable(grad_tap):
        return _native.repeat_taps(grad_tap, weight_shape, scale)
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


@functools.lru_cache(maxsize=64)
def patch_counts(h: int, w: int, r: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Pixels of an h x w map in each r x r patch, (Hp, Wp): partial edge patches count what they have.

    Args:
        h, w: the map's size.
        r: the patch size.
        dtype, device: of the result (cached per argument set: do not change it in place).
    """
    count_h = (h - torch.arange(0, h, r, device=device)).clamp(max=r)
    count_w = (w - torch.arange(0, w, r, device=device)).clamp(max=r)
    return (count_h[:, None] * count_w[None, :]).to(dtype)


@functools.lru_cache(maxsize=64)
def _inverse_counts(h: int, w: int, r: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1 / :func:`patch_counts`, (Hp, Wp)."""
    return 1.0 / patch_counts(h, w, r, dtype, device)


_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the filtered backward computes in: float32 for half-precision tensors, else their own."""
    return torch.float32 if dtype in _HALF else dtype


class _FilteredConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, patch_size, modes):
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.axes = filter_geometry(x.shape, y.shape, tuple(weight.shape[2:]), stride, padding, dilation, patch_size,
                                   modes)
        ctx.groups = groups
        ctx.x_shape = x.shape
        ctx.weight_shape = weight.shape
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        x_sum = None
        if ctx.needs_input_grad[1]:  # half precision: r x r sums accumulated in float32, kept in x's dtype
            x_sum = input_sums(x.to(_compute_dtype(x.dtype)), ctx.axes, groups).to(x.dtype)
        ctx.save_for_backward(x_sum, weight if ctx.needs_input_grad[0] else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        grads = _FilteredConv2dFn._backward(ctx, grad_y.to(_compute_dtype(grad_y.dtype)))
        # each gradient in the dtype of what it is the gradient of
        return tuple(g if g is None or i >= 3 else g.to(ctx.dtypes[i]) for i, g in enumerate(grads))

    @staticmethod
    def _backward(ctx, grad_y):
        """The backward in grad_y's dtype (float32 for half-precision runs: the patch-grid GEMMs are small)."""
        x_sum, weight = (None if t is None else t.to(grad_y.dtype) for t in ctx.saved_tensors)
        grads = filtered_backward(grad_y, x_sum, weight, ctx.axes, ctx.groups, ctx.x_shape, ctx.weight_shape,
                                  *ctx.needs_input_grad[:3])
        return (*grads, None, None, None, None, None, None)


def filter_geometry(x_shape: Sequence[int], y_shape: Sequence[int], kernel: tuple[int, int], stride: tuple[int, int],
                    padding: Union[str, IntPair], dilation: tuple[int, int], patch_size: int,
                    modes: tuple[str, str]) -> tuple[_Axis, _Axis]:
    """The per-axis geometry of a filtered conv (patches, taps, stride phases) for its input and output shapes."""
    left = _left_padding(padding, kernel, dilation)
    return tuple(_Axis(x_shape[2 + i], y_shape[2 + i], kernel[i], stride[i], left[i], dilation[i], patch_size,
                       modes[i]) for i in range(2))


def filtered_backward(grad_y: Tensor, x_sum: Optional[Tensor], weight: Optional[Tensor], axes: tuple[_Axis, _Axis],
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
    if grid_output and not (_collapse_path(axes) and ax_h.n_phases == ax_w.n_phases == 1):
        raise ValueError("grad_x on the patch grid needs a conv whose kernel collapses with one stride phase "
                         "(stride 1, dilation < patch size)")
    if _collapse_path(axes):
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

    return grad_x, grad_w, grad_b


def filtered_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: Union[str, IntPair] = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    patch_size: int,
) -> Tensor:
    """``F.conv2d`` whose backward uses the gradient filter with r x r patches.

    Mixed precision: under ``torch.autocast`` the op casts its inputs to the autocast dtype as
    autocast does for ``F.conv2d`` (the forward runs and x~ is kept in that dtype), and the
    backward runs in float32 (g_y, x~ and the kernel upcast; the patch-grid GEMMs are small) and
    returns every gradient in the dtype of its input, so float32 parameters get float32
    gradients. Half-precision models (no autocast) are handled the same way.

    Args:
        input: (N, C_in, H, W).
        weight: (C_out, C_in / groups, kh, kw).
        bias: optional (C_out,).
        stride: as in F.conv2d.
        padding: as in F.conv2d (int, pair, 'same' or 'valid'); zero padding only.
        dilation: as in F.conv2d.
        groups: as in F.conv2d.
        patch_size: the paper's r (int >= 1).

    Returns:
        Exactly ``F.conv2d(input, weight, bias, stride, padding, dilation, groups)``.
    """
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    padding = padding if isinstance(padding, str) else _pair(padding, "padding")
    modes = axis_modes(stride, dilation, patch_size)
    if (not torch.is_grad_enabled() or input.shape[0] == 0
            or not any(t is not None and t.requires_grad for t in (input, weight, bias))):
        # no backward (keep nothing), or an empty batch (the plain conv's zero gradients are exact)
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    device = input.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)  # cast like autocast casts F.conv2d; .to() casts the grads back
        input, weight = input.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return _FilteredConv2dFn.apply(input, weight, bias, stride, padding, dilation, groups, patch_size, modes)
    return _FilteredConv2dFn.apply(input, weight, bias, stride, padding, dilation, groups, patch_size, modes)
