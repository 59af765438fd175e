"""The gradient of a patch-grid block as it is carried through a chain (dense part, patch grid, pending
BatchNorm scale and ReLU mask), the bit-packed masks and patch counts the forward keeps, and the
placeholder gradients blocks hand each other."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.geometry import patch_counts
from ..ops.stages import grad_patch_sums, spread_grid

__all__ = ["SAVED_CATEGORY", "CarriedGrad", "mul_counts_", "pack_bits", "unpack_bits", "placeholder", "is_placeholder",
           "Slot", "tagged"]

SAVED_CATEGORY = "_gradfilt_saved_category"  # attribute naming the layer type a saved tensor belongs to


class CarriedGrad:
    """A gradient of shape ``size`` (N, C, H, W) kept as (dense * scale + spread(grid)) * mask; parts may be absent.

    ``grid`` is (N, C, ceil(H / r), ceil(W / r)), constant over each r x r patch: grad_x of the filtered conv
    whose geometry is ``axes`` (stride 1, "same"; r = ``axes[0].patch``);
    ``scale`` a per-channel (C,) factor of ``dense`` and ``mask`` a 0/1 (N, C, H, W) map, both pending
    until the gradient is read (a conv reads patch sums, where they cost a pass over the patch grid).
    A pure grid gradient may carry, instead of its mask, the mask's patch sums ``counts`` (C, N, Hp, Wp), any
    dtype: all a filtered conv reads. The methods return new objects (one gradient may feed two branches);
    ``memo`` (shared by all gradients of one backward) keeps each dense * mask product computed once.
    """

    __slots__ = ("size", "dense", "scale", "grid", "axes", "mask", "counts", "memo", "owned")

    def __init__(self, size, dense: Optional[Tensor] = None, grid: Optional[Tensor] = None, axes=None,
                 mask: Optional[Tensor] = None, scale: Optional[Tensor] = None, counts: Optional[Tensor] = None,
                 memo: Optional[dict] = None, owned: bool = False) -> None:
        self.size, self.dense, self.grid, self.axes = torch.Size(size), dense, grid, axes
        self.mask, self.scale, self.counts = mask, scale, counts
        self.memo = {} if memo is None else memo
        self.owned = owned  # nothing else reads ``grid``: it may be changed in place (the object is then spent)

    def _like(self, **changes) -> "CarriedGrad":
        parts = {k: getattr(self, k) for k in ("dense", "grid", "axes", "mask", "scale", "counts", "memo", "owned")}
        return CarriedGrad(self.size, **(parts | changes))

    @property
    def patch(self) -> int:
        """r of the grid (0 without one)."""
        return 0 if self.axes is None else self.axes[0].patch

    def shared(self) -> "CarriedGrad":
        """The same gradient, for one of several readers: none of them may change its grid in place."""
        return self._like(owned=False)

    def _masked_dense(self) -> Tensor:
        """dense * mask (without the scale), computed once per backward."""
        if self.mask is None:
            return self.dense
        key = (id(self.dense), id(self.mask))
        if key not in self.memo:
            self.memo[key] = (self.dense * self.mask, self.dense, self.mask)  # keep the operands: ids stay unique
        return self.memo[key][0]

    def _check_mask(self) -> None:
        if self.counts is not None:
            raise RuntimeError("a gradient that kept only its mask's patch sums cannot be read at full resolution")

    def full(self) -> Tensor:
        """The gradient at full resolution."""
        self._check_mask()
        out = None
        if self.dense is not None:
            out = self._masked_dense()
            out = out if self.scale is None else out * self.scale.view(1, -1, 1, 1)
        if self.grid is not None:
            spread = spread_grid(self.grid[:, :, None, :, None, :], self.axes)  # the op's own spread
            spread = spread if self.mask is None else spread * self.mask
            out = spread if out is None else out + spread
        if out is None:
            raise RuntimeError("an empty gradient has no value")
        return out

    def masked(self, mask: Tensor) -> "CarriedGrad":
        """The gradient times a 0/1 mask."""
        self._check_mask()
        return self._like(mask=mask if self.mask is None else self.mask * mask)

    def counted(self, counts: Tensor) -> "CarriedGrad":
        """A pure grid gradient on ``counts``' grid times a mask known only by its patch sums (C, N, Hp, Wp)."""
        if self.dense is not None or self.mask is not None or self.counts is not None or self.grid is None:
            raise RuntimeError("only a gradient made of one patch grid can take a mask's patch sums")
        return self._like(counts=counts)

    def scaled(self, scale: Tensor) -> "CarriedGrad":
        """The gradient times a per-channel scale (C,)."""
        grid = self.grid
        if grid is not None:
            grid = grid.mul_(scale.view(1, -1, 1, 1)) if self.owned else grid * scale.view(1, -1, 1, 1)
        dense_scale = None if self.dense is None else scale if self.scale is None else self.scale * scale
        return self._like(grid=grid, scale=dense_scale, owned=grid is not None)

    def __add__(self, other: Optional["CarriedGrad"]) -> "CarriedGrad":
        if other is None:
            return self
        self._check_mask()
        other._check_mask()
        if self.mask is not other.mask:
            return CarriedGrad(self.size, dense=self.full() + other.full(), memo=self.memo)
        same_grid = self.grid is None or other.grid is None or self.patch == other.patch
        both_dense = self.dense is not None and other.dense is not None
        if not same_grid or (both_dense and self.scale is not other.scale):  # sum them at full resolution
            dense = self._like(mask=None).full() + other._like(mask=None).full()
            return CarriedGrad(self.size, dense=dense, mask=self.mask, memo=self.memo)
        if both_dense:
            dense, scale = self.dense + other.dense, self.scale
        else:
            dense, scale = (self.dense, self.scale) if other.dense is None else (other.dense, other.scale)
        if self.grid is None or other.grid is None:
            grid, axes = (self.grid, self.axes) if other.grid is None else (other.grid, other.axes)
        else:
            grid, axes = self.grid + other.grid, self.axes
        owned = (self.owned if other.grid is None else other.owned if self.grid is None else True)
        return CarriedGrad(self.size, dense, grid, axes, self.mask, scale, memo=self.memo, owned=owned)

    def patch_sums(self, axes, groups: int) -> Tensor:
        """Patch sums of the gradient on the output grid of a filtered conv of ``groups``, (C, N, Hp, Wp)."""
        patch = axes[0].patch
        if self.grid is not None and self.patch != patch:  # another grid: read it at full resolution
            return grad_patch_sums(self.full(), axes, groups)
        grid_sums = None
        if self.grid is not None:
            # sum_{p in P} spread(grid)[p] * m[p] = grid[P] * (sum_{p in P} m[p]), in the grid's own layout
            # (patch-major when a filtered conv wrote it: the GEMMs read it as it is, no transposing copy)
            if self.counts is not None:
                counts = self.counts  # (C, N, Hp, Wp), bytes
            elif self.mask is None:
                counts = patch_counts(*self.size[2:], patch, self.grid.dtype, self.grid.device)  # (Hp, Wp)
            else:
                counts = grad_patch_sums(self.mask, axes)  # (C, N, Hp, Wp)
            grid_t = self.grid.transpose(0, 1)  # (C, N, Hp, Wp)
            grid_sums = mul_counts_(grid_t, counts) if self.owned else grid_t * counts.to(grid_t.dtype)
        if self.dense is None:
            return grid_sums
        sums = grad_patch_sums(self._masked_dense(), axes, groups)  # (C, N, Hp, Wp)
        if self.scale is not None:  # a per-channel factor commutes with the patch sums
            sums.mul_(self.scale.view(-1, 1, 1, 1))
        return sums if grid_sums is None else sums.add_(grid_sums)


_CHUNK_BYTES = 2**20  # float copies of byte counts made this many bytes at a time: reused memory, no page faults


def mul_counts_(grid: Tensor, counts: Tensor) -> Tensor:
    """``grid *= counts`` in place: a patch grid (C, N, Hp, Wp) times a mask's patch counts.

    Byte counts are widened to the grid's dtype one batch slice at a time, so the float copies stay
    small (reused memory: no fresh pages to fault in, and a same-dtype product instead of a slow
    mixed-dtype one).

    Args:
        grid: (C, N, Hp, Wp), any layout.
        counts: (C, N, Hp, Wp) in any dtype, or (Hp, Wp).
    """
    if counts.dtype == grid.dtype or counts.dim() < 4:
        return grid.mul_(counts.to(grid.dtype))
    step = max(1, _CHUNK_BYTES // max(1, grid[:, 0].numel() * grid.element_size()))
    for i in range(0, grid.shape[1], step):
        grid[:, i:i + step].mul_(counts[:, i:i + step].to(grid.dtype))
    return grid



def pack_bits(mask: Tensor) -> Tensor:
    """A bool map as bits, 8 per byte (uint8, ceil(numel / 8))."""
    flat = mask.reshape(-1)
    flat = F.pad(flat.to(torch.uint8), (0, -flat.numel() % 8)).view(-1, 8)  # (bytes, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (flat * weights).sum(1, dtype=torch.uint8)


_BIT_TABLES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def unpack_bits(bits: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`pack_bits`: the 0/1 map of ``shape``, in ``dtype`` (a gradient multiplies it)."""
    key = (dtype, bits.device)
    if key not in _BIT_TABLES:  # row b: the 8 bits of byte b, lowest first
        byte = torch.arange(256, device=bits.device)
        _BIT_TABLES[key] = (byte[:, None] >> torch.arange(8, device=bits.device) & 1).to(dtype)  # (256, 8)
    flat = _BIT_TABLES[key][bits.long()].view(-1)[: shape.numel()]  # one gather: (bytes, 8) -> (numel,)
    return flat.view(shape)



_ZERO: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def placeholder(shape: torch.Size, like: Tensor) -> Tensor:
    """A zero gradient of ``shape`` that allocates nothing (a broadcast scalar), recognisable by its storage."""
    key = (like.dtype, like.device)
    if key not in _ZERO:
        _ZERO[key] = torch.zeros((), dtype=like.dtype, device=like.device)
    return _ZERO[key].expand(shape)


def is_placeholder(grad: Tensor) -> bool:
    zero = _ZERO.get((grad.dtype, grad.device))
    return zero is not None and grad.data_ptr() == zero.data_ptr() and all(s == 0 for s in grad.stride())


class Slot:
    """Where the next block leaves the gradient of a block's output (``node``: id of the output's grad_fn)."""

    __slots__ = ("node", "version", "grad")

    def __init__(self) -> None:
        self.node, self.version, self.grad = 0, 0, None


def tagged(t: Tensor, category: str) -> Tensor:
    setattr(t, SAVED_CATEGORY, category)
    return t
