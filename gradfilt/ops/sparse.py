"""``SparseConv2d``: a conv whose weight trains on a fixed subset of channels, for real.

Sparse update (Lin et al., NeurIPS 2022) trains, in a layer, the weights of a few input channels
(per output channel of a depthwise conv) and, in other layers, only the bias. A mask on a dense
gradient would save nothing; this layer:

* keeps the trained channels in their own Parameter, ``weight_update`` (C_out, n, k, k) for a
  dense conv, (n, 1, k, k) for a depthwise one; ``weight`` (frozen) holds the others. The
  optimizer only ever sees ``weight_update``, so the other channels stay bit-identical whatever
  the optimizer does (momentum, weight decay, Adam);
* keeps for backward only the input channels the weight gradient needs (none for a bias-only
  layer), and computes only those weight-gradient columns;
* computes grad_x with the whole weight when an earlier layer trains (autograd asks for it).

``state_dict`` shows the layer as the ``nn.Conv2d`` it came from (one merged ``weight``), so
checkpoints load into the plain network and back.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input, conv2d_weight

__all__ = ["SparseConv2d", "sparse_conv2d", "select_channels", "is_depthwise", "channel_dim", "CRITERIA"]

CRITERIA = ("magnitude+", "magnitude-", "random")


def is_depthwise(conv: nn.Conv2d) -> bool:
    """A depthwise conv: one group per channel, as many outputs as inputs."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def channel_dim(groups: int) -> int:
    """The weight dimension channels are selected along: input channels (1), output channels (0) when depthwise."""
    return 0 if groups > 1 else 1


def _merged(frozen: Tensor, update: Tensor, channels: Tensor, groups: int) -> Tensor:
    """The whole weight: ``frozen`` with its selected ``channels`` replaced by ``update``."""
    if not channels.numel():
        return frozen
    return frozen.index_copy(channel_dim(groups), channels, update.to(frozen.dtype))


def select_channels(weight: Tensor, groups: int, count: int, criterion: str = "magnitude+",
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """The channels whose weights train: input channels of a dense conv, output channels of a depthwise one.

    Args:
        weight: the conv's weight (C_out, C_in/groups, k, k).
        groups: the conv's groups (1, or C_in for depthwise).
        count: how many channels (0 <= count <= channels).
        criterion: ``magnitude+`` (largest L2 norm of the channel's weights), ``magnitude-``
            (smallest) or ``random``.
        generator: random source for ``random``.

    Returns:
        Sorted LongTensor of channel indices.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown channel selection criterion {criterion!r}; valid: {list(CRITERIA)}")
    dim = channel_dim(groups)
    channels = weight.shape[dim]
    if not 0 <= count <= channels:
        raise ValueError(f"cannot select {count} of {channels} channels")
    if criterion == "random":
        chosen = torch.randperm(channels, generator=generator)[:count]
    else:
        norms = weight.detach().float().transpose(0, dim).reshape(channels, -1).norm(dim=1)
        chosen = torch.sort(norms, descending=criterion == "magnitude+", stable=True).indices[:count]
    return torch.sort(chosen.to(torch.long)).values


class _SparseConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, frozen, update, bias, channels, stride, padding, dilation, groups):
        weight = _merged(frozen, update, channels, groups)
        ctx.conf = (stride, padding, dilation, groups, x.shape, x.dtype, bias is not None)
        train_update = ctx.needs_input_grad[2] and channels.numel() > 0
        x_kept = x.index_select(1, channels) if train_update else None  # only the trained channels' inputs
        ctx.channels = channels  # an index buffer of the module, not an activation
        ctx.save_for_backward(x_kept, frozen, update)
        return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding,
                        dilation, groups)

    @staticmethod
    def backward(ctx, grad_y):
        stride, padding, dilation, groups, x_shape, x_dtype, has_bias = ctx.conf
        x_kept, frozen, update = ctx.saved_tensors
        channels = ctx.channels
        grad_x = grad_update = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = _merged(frozen, update, channels, groups)
            grad_x = conv2d_input(x_shape, weight.to(grad_y.dtype), grad_y, stride, padding, dilation, groups)
            grad_x = grad_x.to(x_dtype)
        if ctx.needs_input_grad[2] and channels.numel():
            dtype = torch.promote_types(grad_y.dtype, x_kept.dtype)
            if groups > 1:  # depthwise: channel c of the output reads channel c of the input
                grad_update = conv2d_weight(x_kept.to(dtype), update.shape, grad_y.index_select(1, channels).to(dtype),
                                            stride, padding, dilation, channels.numel())
            else:
                grad_update = conv2d_weight(x_kept.to(dtype), update.shape, grad_y.to(dtype), stride, padding,
                                            dilation, 1)
            grad_update = grad_update.to(update.dtype)
        if has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_y.sum((0, 2, 3))
        return grad_x, None, grad_update, grad_bias, None, None, None, None, None


def sparse_conv2d(x: Tensor, frozen: Tensor, update: Tensor, bias: Optional[Tensor], channels: Tensor,
                  stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """``F.conv2d`` with ``weight = frozen`` whose ``channels`` (dim 1, dim 0 for depthwise) are ``update``;
    the backward keeps and computes only what the trained channels need (see the module docstring)."""
    return _SparseConv2dFn.apply(x, frozen, update, bias, channels, stride, padding, dilation, groups)


class SparseConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight trains on ``channels`` only (none: bias only); forward output is exactly
    the conv's.

    Build it with :meth:`from_conv`. Attributes: ``channels`` (buffer, sorted LongTensor),
    ``weight_update`` (the trained channels' weights, a Parameter), ``weight`` (all channels,
    frozen; its trained channels are stale, use :meth:`merged_weight`).
    """

    def __init__(self, *args, channels: Sequence[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups > 1 and not is_depthwise(self):
            raise ValueError(f"SparseConv2d supports dense (groups=1) and depthwise convs, got groups={self.groups} "
                             f"with {self.in_channels} -> {self.out_channels} channels")
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("SparseConv2d supports numeric zero padding only")
        self.register_buffer("channels", torch.as_tensor(list(channels), dtype=torch.long), persistent=False)
        shape = list(self.weight.shape)
        shape[self._dim] = len(channels)
        self.weight_update = nn.Parameter(torch.empty(shape, device=self.weight.device, dtype=self.weight.dtype))
        self.weight.requires_grad_(False)
        self.register_state_dict_post_hook(_merge_state)
        self.register_load_state_dict_pre_hook(_split_state)

    @property
    def _dim(self) -> int:
        return channel_dim(self.groups)

    def merged_weight(self) -> Tensor:
        """The conv's whole current weight (trained channels included), detached."""
        return _merged(self.weight, self.weight_update, self.channels, self.groups).detach()

    @torch.no_grad()
    def select(self, channels: Sequence[int]) -> None:
        """Train ``channels`` from now on, as many as now (dynamic sparse update moves them every step).

        The trained values go back into ``weight`` and ``weight_update`` takes the new channels'
        values in place: it stays the same Parameter, so an optimizer built earlier keeps training it
        (its per-element state, e.g. momentum, is the caller's to move along).

        Args:
            channels: the new channel indices (sorted here), ``channels.numel()`` of them.
        """
        new = torch.sort(torch.as_tensor(list(channels), dtype=torch.long, device=self.channels.device)).values
        if new.numel() != self.channels.numel() or (new.numel() and not (
                0 <= int(new[0]) and int(new[-1]) < self.weight.shape[self._dim] and bool((new.diff() > 0).all()))):
            raise ValueError(f"select() takes {self.channels.numel()} distinct channels in "
                             f"[0, {self.weight.shape[self._dim]}), got {new.tolist()}")
        self.weight.index_copy_(self._dim, self.channels, self.weight_update.to(self.weight.dtype))
        self.channels = new  # a new tensor: a graph built earlier keeps the channels it was built with
        self.weight_update.copy_(self.weight.index_select(self._dim, new))

    def forward(self, input: Tensor) -> Tensor:
        return sparse_conv2d(input, self.weight, self.weight_update, self.bias, self.channels, self.stride,
                             self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        n = self.channels.numel()
        total = self.weight.shape[self._dim]
        kind = "output (depthwise)" if self.groups > 1 else "input"
        return f"{super().extra_repr()}, weight trains on {n}/{total} {kind} channels"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, channels: Sequence[int]) -> "SparseConv2d":
        """A sparse copy of ``conv`` sharing its weight and bias Parameters; ``weight_update`` starts as
        the selected channels' current weights.

        Args:
            conv: a plain ``nn.Conv2d``.
            channels: input channels (output channels for depthwise) whose weights train; [] for bias only.
        """
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"SparseConv2d.from_conv expects a plain torch.nn.Conv2d, got {type(conv).__name__}")
        sparse = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                     padding_mode=conv.padding_mode, device="meta", dtype=conv.weight.dtype, channels=list(channels))
        sparse.weight = conv.weight
        sparse.bias = conv.bias
        sparse.channels = sparse.channels.to(conv.weight.device)
        with torch.no_grad():
            sparse.weight_update = nn.Parameter(conv.weight.index_select(sparse._dim, sparse.channels).clone(),
                                                requires_grad=bool(len(channels)))  # bias only: nothing to train
        conv.weight.requires_grad_(False)
        sparse.train(conv.training)
        return sparse


def _merge_state(module: SparseConv2d, state: dict[str, Any], prefix: str, local_metadata) -> None:
    state[prefix + "weight"] = module.merged_weight()
    state.pop(prefix + "weight_update", None)


def _split_state(module: SparseConv2d, state: dict[str, Any], prefix: str, local_metadata, strict, missing,
                 unexpected, errors) -> None:
    weight = state.get(prefix + "weight")
    if weight is not None and prefix + "weight_update" not in state:
        state[prefix + "weight_update"] = weight.index_select(module._dim, module.channels.to(weight.device))
