"""Geometry of a gradient-filtered conv: the per-axis modes, patch counts and ranges its backward works on.

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
from typing import Sequence, Union

import torch
from torch import Tensor

IntPair = Union[int, Sequence[int]]

__all__ = ["IntPair", "Axis", "pair", "check_patch_size", "axis_modes", "left_padding", "filter_geometry",
           "patch_counts", "inverse_patch_counts", "compute_dtype"]


def pair(value: IntPair, name: str) -> tuple[int, int]:
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
    sh, sw = pair(stride, "stride")
    dh, dw = pair(dilation, "dilation")
    return (_axis_mode(sh, dh, patch_size, "height"), _axis_mode(sw, dw, patch_size, "width"))


def left_padding(padding: Union[str, IntPair], kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Padding before the first pixel on each axis, as F.conv2d applies it."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":  # torch puts the odd pixel of the total padding at the end
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))  # type: ignore[return-value]
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    return pair(padding, "padding")



@dataclass(frozen=True)
class Axis:
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


def filter_geometry(x_shape: Sequence[int], y_shape: Sequence[int], kernel: tuple[int, int], stride: tuple[int, int],
                    padding: Union[str, IntPair], dilation: tuple[int, int], patch_size: int,
                    modes: tuple[str, str]) -> tuple[Axis, Axis]:
    """The per-axis geometry of a filtered conv (patches, taps, stride phases) for its input and output shapes."""
    left = left_padding(padding, kernel, dilation)
    return tuple(Axis(x_shape[2 + i], y_shape[2 + i], kernel[i], stride[i], left[i], dilation[i], patch_size,
                       modes[i]) for i in range(2))


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
def inverse_patch_counts(h: int, w: int, r: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1 / :func:`patch_counts`, (Hp, Wp)."""
    return 1.0 / patch_counts(h, w, r, dtype, device)


_HALF = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the filtered backward computes in: float32 for half-precision tensors, else their own."""
    return torch.float32 if dtype in _HALF else dtype

