"""``PrunedConv2d``: error-map pruning (Wu, Wang, Shi, Hu, IEEE TCAD 2020) for real, optionally filtered.

Per conv layer and per mini-batch, output channel j of the error map delta = dL/dY gets the score

    s_j = g1 * ||W_j||_1 + g2 * ||delta_j||_1      (delta_j summed over the batch and the pixels)

and only the top ``ceil(alpha * C_out)`` channels K take part in the backward:

    grad_W[K] = conv2d_weight(x, delta[:, K]),  grad_W[not K] = 0,  grad_b likewise,
    grad_x    = conv2d_input(W[K], delta[:, K]),

a conv with |K| output channels, not the dense backward multiplied by a mask. With ``patch_size``
the kept channels go through the gradient filter's backward
(:func:`gradfilt.ops.filtered_backward` on the subset; the layer keeps x~ instead of x):
pruning, then filtering, one implementation of each. Scoring reads delta once and the weight once
(C_out * (C_in/g * k^2 + N * H * W) additions), which the cost model counts.

Dense convs only (groups = 1): a pruned output channel of a grouped conv would still need its
group's input.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight

from .geometry import axis_modes, check_patch_size, filter_geometry
from .stages import filtered_backward, input_sums

__all__ = ["PrunedConv2d", "channel_scores", "kept_channels"]


def channel_scores(weight: Tensor, grad_y: Tensor, g1: float, g2: float) -> Tensor:
    """s_j = g1 * ||W_j||_1 + g2 * ||delta_j||_1 per output channel j (delta summed over batch and pixels).

    Args:
        weight: (C_out, C_in, kh, kw).
        grad_y: delta = dL/dY, (N, C_out, H, W).
        g1, g2: the weights of the two terms.
    """
    return g1 * weight.abs().sum((1, 2, 3)) + g2 * grad_y.abs().sum((0, 2, 3))


def kept_channels(scores: Tensor, alpha: float) -> Tensor:
    """The sorted indices of the top ``ceil(alpha * C)`` scores (ties: the lower index first)."""
    count = max(1, math.ceil(alpha * scores.numel()))
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:count]).values


class _PrunedConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, module, stride, padding, dilation, patch_size):
        y = F.conv2d(x, weight, bias, stride, padding, dilation)
        ctx.module, ctx.conf = module, (stride, padding, dilation, x.shape, bias is not None)
        ctx.axes = None
        kept = None
        if ctx.needs_input_grad[1]:
            if patch_size is None:
                kept = x  # the weight gradient of any kept channel reads the whole input
            else:
                ctx.axes = filter_geometry(x.shape, y.shape, tuple(weight.shape[2:]), stride, padding, dilation,
                                           patch_size, axis_modes(stride, dilation, patch_size))
                kept = input_sums(x, ctx.axes)  # x~ only
        ctx.save_for_backward(kept, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x_kept, weight = ctx.saved_tensors
        stride, padding, dilation, x_shape, has_bias = ctx.conf
        module = ctx.module
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        kept = kept_channels(channel_scores(weight, grad_y, module.g1, module.g2), module.alpha)
        module.last_kept = kept
        g_kept = grad_y.index_select(1, kept)  # (N, |K|, H, W)
        w_kept = weight.index_select(0, kept)  # (|K|, C_in, kh, kw)
        if ctx.axes is not None:
            grad_x, gw_kept, gb_kept = filtered_backward(g_kept, x_kept, w_kept, ctx.axes, 1, x_shape, w_kept.shape,
                                                         need_x, need_w, need_b)
        else:
            grad_x = conv2d_input(x_shape, w_kept, g_kept, stride, padding, dilation) if need_x else None
            gw_kept = conv2d_weight(x_kept, w_kept.shape, g_kept, stride, padding, dilation) if need_w else None
            gb_kept = g_kept.sum((0, 2, 3)) if need_b else None
        grad_w = None if gw_kept is None else weight.new_zeros(weight.shape).index_copy_(0, kept, gw_kept)
        grad_b = None if gb_kept is None else grad_y.new_zeros(grad_y.shape[1]).index_copy_(0, kept, gb_kept)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class PrunedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward keeps only the top ``alpha`` output channels of the error map.

    Build it with :meth:`from_conv`. Attributes: ``alpha``, ``g1``, ``g2``, ``patch_size`` (None:
    exact backward on the kept channels), ``last_kept`` (the channels the latest backward kept).
    """

    def __init__(self, *args, alpha: float, g1: float, g2: float, patch_size: Optional[int] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise ValueError(f"PrunedConv2d prunes dense convs (groups=1), got groups={self.groups}")
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("PrunedConv2d supports numeric zero padding only")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha (the kept share of output channels) must be in (0, 1], got {alpha!r}")
        if g1 < 0 or g2 < 0 or g1 + g2 == 0:
            raise ValueError(f"g1 and g2 weigh the two score terms: both >= 0, not both 0; got {g1!r}, {g2!r}")
        if patch_size is not None:
            check_patch_size(patch_size)
            axis_modes(self.stride, self.dilation, patch_size)  # rejects what the filter cannot do
        self.alpha, self.g1, self.g2, self.patch_size = alpha, g1, g2, patch_size
        self.last_kept: Optional[Tensor] = None

    def forward(self, input: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad
                                                  for t in (input, self.weight, self.bias)):
            return super().forward(input)
        return _PrunedConv2dFn.apply(input, self.weight, self.bias, self, self.stride, self.padding, self.dilation,
                                     self.patch_size)

    def extra_repr(self) -> str:
        filt = "" if self.patch_size is None else f", patch_size={self.patch_size}"
        return f"{super().extra_repr()}, alpha={self.alpha}, g1={self.g1}, g2={self.g2}{filt}"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, alpha: float, g1: float, g2: float,
                  patch_size: Optional[int] = None) -> "PrunedConv2d":
        """A pruned conv sharing ``conv``'s weight and bias Parameters.

        Args:
            conv: a plain dense ``nn.Conv2d``.
            alpha, g1, g2: the pruning (module docstring).
            patch_size: gradient filter on the kept channels; None for their exact backward.
        """
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"PrunedConv2d.from_conv expects a plain torch.nn.Conv2d, got {type(conv).__name__}")
        pruned = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                     padding_mode=conv.padding_mode, device="meta", dtype=conv.weight.dtype, alpha=alpha, g1=g1,
                     g2=g2, patch_size=patch_size)
        pruned.weight = conv.weight
        pruned.bias = conv.bias
        pruned.train(conv.training)
        return pruned
