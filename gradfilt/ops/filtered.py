"""The gradient-filtered conv: :func:`filtered_conv2d` (plain function), its autograd Function and
:class:`FilteredConv2d` (a drop-in ``nn.Conv2d``).

The forward pass is exactly ``F.conv2d`` and keeps only the patch sums x~ of the input; the backward
replaces g_y by its r x r patch means and computes both gradients on the patch grid
(:mod:`gradfilt.ops.geometry` explains the per-axis modes, :mod:`gradfilt.ops.stages` holds the stages).
``FilteredConv2d.from_conv`` swaps a trained conv for a filtered one that shares the very same Parameter
objects, so an optimizer built before the swap keeps training them.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .geometry import IntPair, axis_modes, check_patch_size, compute_dtype, filter_geometry, pair
from .stages import filtered_backward, input_sums

__all__ = ["filtered_conv2d", "FilteredConv2d"]



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
            x_sum = input_sums(x.to(compute_dtype(x.dtype)), ctx.axes, groups).to(x.dtype)
        ctx.save_for_backward(x_sum, weight if ctx.needs_input_grad[0] else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        grads = _FilteredConv2dFn._backward(ctx, grad_y.to(compute_dtype(grad_y.dtype)))
        # each gradient in the dtype of what it is the gradient of
        return tuple(g if g is None or i >= 3 else g.to(ctx.dtypes[i]) for i, g in enumerate(grads))

    @staticmethod
    def _backward(ctx, grad_y):
        """The backward in grad_y's dtype (float32 for half-precision runs: the patch-grid GEMMs are small)."""
        x_sum, weight = (None if t is None else t.to(grad_y.dtype) for t in ctx.saved_tensors)
        grads = filtered_backward(grad_y, x_sum, weight, ctx.axes, ctx.groups, ctx.x_shape, ctx.weight_shape,
                                  *ctx.needs_input_grad[:3])
        return (*grads, None, None, None, None, None, None)


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
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    padding = padding if isinstance(padding, str) else pair(padding, "padding")
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


class FilteredConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the gradient-filtered backward (forward output is exactly ``F.conv2d``).

    Args:
        *args: as ``nn.Conv2d`` (in_channels, out_channels, kernel_size, stride, padding, ...).
        patch_size: the paper's r, side of the square patches g_y is averaged over (keyword, int >= 1).
        **kwargs: as ``nn.Conv2d``. Only ``padding_mode='zeros'`` is supported.
    """

    def __init__(self, *args, patch_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(
                f"FilteredConv2d supports padding_mode='zeros' only, got {self.padding_mode!r}"
            )
        self.patch_size = check_patch_size(patch_size)
        axis_modes(self.stride, self.dilation, self.patch_size)

    def forward(self, input: Tensor) -> Tensor:
        return filtered_conv2d(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
            patch_size=self.patch_size,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, patch_size={self.patch_size}"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, patch_size: int) -> "FilteredConv2d":
        """A filtered copy of ``conv`` that shares its Parameter objects (weight and bias).

        Args:
            conv: a plain ``nn.Conv2d`` (or a ``FilteredConv2d``, to change its patch size).
            patch_size: the paper's r.

        Returns:
            A new ``FilteredConv2d`` in the same train/eval mode, on the same device and dtype.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv expects a torch.nn.Conv2d, got {type(conv).__name__}")
        if type(conv).forward not in (nn.Conv2d.forward, cls.forward):
            raise TypeError(
                f"{type(conv).__name__} overrides Conv2d.forward, so replacing it by a plain filtered "
                f"convolution would change what it computes; only torch.nn.Conv2d (and FilteredConv2d) "
                f"can be swapped"
            )
        filtered = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device="meta", dtype=conv.weight.dtype, patch_size=patch_size,
        )
        filtered.weight = conv.weight  # the same Parameter objects, not copies
        filtered.bias = conv.bias
        filtered.train(conv.training)
        return filtered

