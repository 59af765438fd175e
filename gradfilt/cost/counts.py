"""Backward FLOPs and activation memory of a model as a method set it up, in the paper's conventions.

The convention (which layers count, the FLOPs of each backward, what memory means) is written out in
``docs/cost_model.md``; every function here follows it. Shapes come from one traced forward pass
(:func:`gradfilt.surgery.trace_layers`), so any model works.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..ops.filtered import FilteredConv2d
from ..ops.geometry import axis_modes, filter_geometry
from ..ops.pruned import PrunedConv2d
from ..ops.sparse import SparseConv2d
from ..surgery.trace import LayerCall, trace_layers

__all__ = ["FLOAT_BYTES", "LayerCost", "CostReport", "training_flops", "conv_cost", "forward_cost", "pruned_conv_cost",
           "emp_conv_cost", "linear_cost", "image_size_of", "check_batch", "traced_calls", "estimate_configured"]

FLOAT_BYTES = 4


@dataclass
class LayerCost:
    """Cost of one trainable layer (FLOPs of its backward, bytes it keeps for backward)."""

    name: str
    type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    patch_size: Optional[int]
    needs_grad_input: bool
    flops: int
    activation_bytes: int


@dataclass
class CostReport:
    """Totals and per-layer costs of one strategy."""

    backward_flops: int
    activation_bytes: int
    batch_size: int
    patch_size: Union[None, int, dict[str, int]]
    layers: list[LayerCost] = field(default_factory=list)
    trainable_params: int = 0
    uncounted: list[str] = field(default_factory=list)
    forward_flops: int = 0
    overhead_flops: int = 0  # per step, outside the main network (early instance filtering's filter network)

    def to_dict(self) -> dict:
        return asdict(self)


def training_flops(report: CostReport, kept_fraction: float = 1.0) -> float:
    """Forward + backward FLOPs one training step costs, per ``report.batch_size`` instances of the data.

    The main network's forward and backward run on the ``kept_fraction`` of the instances a method
    trains on (1 unless it drops instances); its overhead (e.g. a filter network) runs on all of them.

    Args:
        report: a method's cost report.
        kept_fraction: share of the instances the main network saw, in [0, 1].
    """
    if not 0 <= kept_fraction <= 1:
        raise ValueError(f"kept_fraction must be in [0, 1], got {kept_fraction!r}")
    return kept_fraction * (report.forward_flops + report.backward_flops) + report.overhead_flops


def conv_cost(call: LayerCall, patch_size: Optional[int], grad_input: bool, batch: int,
              weight: bool = True, bias_only: bool = False, channels: Optional[int] = None) -> tuple[int, int]:
    """(backward FLOPs, bytes kept for backward) of one conv in the backward, formulas in the module docstring.

    Args:
        call: the traced layer (module and shapes without batch).
        patch_size: r, or None for vanilla BP.
        grad_input: whether its grad_x is computed (a trainable layer lies below it).
        batch: images per step.
        weight: whether its weight trains (False: frozen, or bias only).
        bias_only: its bias trains and its weight does not.
        channels: the weight trains on this many input channels only (output channels of a
            depthwise conv; sparse update): its weight gradient and kept input scale with them.
    """
    conv = call.module
    c_in, h_in, w_in = call.in_shape
    c_out, h_out, w_out = call.out_shape
    c_in_g = c_in // conv.groups
    c_out_g = c_out // conv.groups
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    hw = h_out * w_out
    flops = batch * c_out * hw if bias_only else 0  # the bias gradient: g_y summed per channel
    if patch_size is None:
        kept = c_in if channels is None else channels  # input channels the weight gradient reads
        if weight:
            pairs = c_out * c_in_g if channels is None else (channels if conv.groups > 1 else c_out * channels)
            flops += batch * (taps + 1) * pairs * hw
        if grad_input:
            flops += batch * 2 * c_out * c_in_g * taps * hw
        return flops, batch * kept * h_in * w_in * FLOAT_BYTES if weight else 0
    # the op's own geometry: patches of the output grid, kernel taps kept, stride phases of grad_x
    axes = filter_geometry((1, *call.in_shape), (1, *call.out_shape), conv.kernel_size, conv.stride,
                           0 if isinstance(conv.padding, str) else conv.padding, conv.dilation, patch_size,
                           axis_modes(conv.stride, conv.dilation, patch_size))
    kept = axes[0].kept_taps * axes[1].kept_taps
    phases = axes[0].n_phases * axes[1].n_phases
    patches = axes[0].n_patches * axes[1].n_patches
    if weight or grad_input:
        flops += batch * c_out * (hw + patches)  # averaging g_y
    if weight:
        flops += c_out * c_in_g * kept * (2 * batch * patches - 1)  # weight gradient on the patch grid
    if grad_input:
        flops += batch * phases * c_in * patches * (2 * c_out_g * kept - 1)
        flops += c_out * c_in_g * (taps - phases * kept)  # kernel sums per phase
    return flops, batch * c_in * patches * FLOAT_BYTES if weight else 0


def forward_cost(call: LayerCall, batch: int, patch_sums: bool = False) -> int:
    """Forward FLOPs of one conv or linear layer (multiplications and additions, as the backward is counted).

    A conv: 2 * C_out * C_in/g * k^2 per output pixel; a linear layer: 2 * in * out; times the batch.
    ``patch_sums``: the layer also sums its input into the patch sums x~ a gradient filter keeps
    (one addition per input value).

    Args:
        call: the traced layer.
        batch: images per step.
        patch_sums: the layer is a filtered conv whose weight trains.
    """
    module = call.module
    if isinstance(module, nn.Linear):
        return batch * 2 * call.in_shape[-1] * call.out_shape[-1]
    c_out, h_out, w_out = call.out_shape
    taps = module.kernel_size[0] * module.kernel_size[1]
    flops = 2 * c_out * (call.in_shape[0] // module.groups) * taps * h_out * w_out
    if patch_sums:
        flops += call.in_shape[0] * call.in_shape[1] * call.in_shape[2]
    return batch * flops


def pruned_conv_cost(call: LayerCall, grad_input: bool, batch: int, weight: bool = True, bias: bool = False) -> int:
    """Backward FLOPs of a :class:`~gradfilt.ops.PrunedConv2d`: its backward (exact or filtered) on the
    ceil(alpha * C_out) kept output channels, plus scoring the channels once per step
    (||W_j||_1: C_out * C_in/g * k^2 additions; ||delta_j||_1: B * C_out * H_out * W_out; weighing and
    adding the two: 3 * C_out). Its kept input (x or x~) is the whole layer's: :func:`conv_cost`.

    Args:
        call: the traced layer.
        grad_input: whether its grad_x is computed.
        batch: images per step.
        weight: whether its weight trains.
        bias: whether its bias trains (counted with the kept channels when the weight does not).
    """
    return emp_conv_cost(call, call.module.alpha, call.module.patch_size, grad_input, batch, weight, bias)


def emp_conv_cost(call: LayerCall, alpha: float, patch_size: Optional[int], grad_input: bool, batch: int,
                  weight: bool = True, bias: bool = False) -> int:
    """:func:`pruned_conv_cost` of a plain traced conv pruned with ``alpha`` and filtered with ``patch_size``
    (what the budgeted search prices before any layer is swapped)."""
    conv = call.module
    c_out, h_out, w_out = call.out_shape
    kept = max(1, math.ceil(alpha * c_out))
    subset = replace(call, out_shape=(kept, h_out, w_out))
    flops, _ = conv_cost(subset, patch_size, grad_input, batch, weight, bias and not weight)
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    return flops + c_out * (call.in_shape[0] // conv.groups) * taps + batch * c_out * h_out * w_out + 3 * c_out


def linear_cost(call: LayerCall, grad_input: bool, batch: int, weight: bool = True,
                bias_only: bool = False) -> int:
    """Backward FLOPs of one linear layer in the backward (it keeps no conv input).

    Args:
        call: the traced layer.
        grad_input: whether its grad_x is computed.
        batch: images per step.
        weight: whether its weight trains: 3*in*out per image, the paper's worked cell.
        bias_only: its bias trains and its weight does not: out per image.
    """
    fan_in, fan_out = call.in_shape[-1], call.out_shape[-1]
    if weight:
        return 3 * batch * fan_in * fan_out
    return batch * fan_out * bias_only + (2 * batch * fan_in * fan_out if grad_input else 0)


def image_size_of(image_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(h, w) < 1:
        raise ValueError(f"image size must be >= 1, got {image_size!r}")
    return h, w


def check_batch(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def traced_calls(model: nn.Module, h: int, w: int, in_channels: int) -> list[LayerCall]:
    """Traced Conv2d/Linear calls at batch 1, or a ValueError saying the image is too small."""
    param = next(model.parameters(), None)
    example = torch.zeros(1, in_channels, h, w, device=param.device if param is not None else None)
    try:
        calls = trace_layers(model, example)
    except RuntimeError as err:
        raise ValueError(f"image size {h}x{w} is too small for {type(model).__name__}: {err}") from None
    for call in calls:
        if isinstance(call.module, nn.Conv2d) and any(n < s for n, s in zip(call.in_shape[1:], call.module.stride)):
            raise ValueError(
                f"image size {h}x{w} is too small for {type(model).__name__}: layer {call.name!r} (stride "
                f"{call.module.stride}) gets a {call.in_shape[1]}x{call.in_shape[2]} map"
            )
    return calls


def estimate_configured(
    model: nn.Module, image_size: Union[int, Sequence[int]] = 224, batch_size: int = 1, in_channels: int = 3
) -> CostReport:
    """Backward FLOPs and activation memory of a model as it is set up for training.

    The layers in the backward, and whether each needs its input gradient, come from one traced
    forward pass with autograd on; patch sizes are those of its FilteredConv2d layers. Layers the
    forward pass does not run (e.g. an auxiliary head used only by a loss) are not counted.

    Args:
        model: a model after a method's ``apply`` (or ``freeze`` / ``install_filters``).
        image_size: S or (H, W).
        batch_size: images per step.
        in_channels: channels of the input image.
    """
    check_batch(batch_size)
    h, w = image_size_of(image_size)
    layers = []
    forward = 0
    for call in traced_calls(model, h, w, in_channels):
        module = call.module
        channels = module.channels.numel() if isinstance(module, SparseConv2d) else None
        weight = module.weight.requires_grad or bool(channels) and module.weight_update.requires_grad
        bias = module.bias is not None and module.bias.requires_grad
        r = module.patch_size if isinstance(module, (FilteredConv2d, PrunedConv2d)) else None
        forward += forward_cost(call, batch_size, patch_sums=r is not None and weight)
        if not (weight or bias or call.grad_input):
            continue
        bias_only = bias and not weight
        if isinstance(module, nn.Conv2d):
            flops, nbytes = conv_cost(call, r, call.grad_input, batch_size, weight, bias_only, channels or None)
            kind = ("conv-sparse" if channels else "conv") if weight else "conv-bias" if bias else "conv-frozen"
            if isinstance(module, PrunedConv2d):
                flops, kind = pruned_conv_cost(call, call.grad_input, batch_size, weight, bias), "conv-emp"
        else:
            nbytes = 0
            flops = linear_cost(call, call.grad_input, batch_size, weight, bias_only)
            kind = "linear" if weight else "linear-bias" if bias else "linear-frozen"
        layers.append(LayerCost(call.name, kind, call.in_shape, call.out_shape, r, call.grad_input, flops, nbytes))
    uncounted = sorted(name for name, m in model.named_modules()
                       if not isinstance(m, (nn.Conv2d, nn.Linear))
                       and any(p.requires_grad for p in m.parameters(recurse=False)))
    patches = {layer.name: layer.patch_size for layer in layers if layer.patch_size is not None}
    return CostReport(
        backward_flops=sum(layer.flops for layer in layers),
        activation_bytes=sum(layer.activation_bytes for layer in layers),
        batch_size=batch_size,
        patch_size=patches,
        layers=layers,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        uncounted=uncounted,
        forward_flops=forward,
    )
