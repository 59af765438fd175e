"""Backward FLOPs and activation memory of a training method, in the paper's conventions.

Shapes come from one traced forward pass (:func:`gradfilt.trace.trace_layers`), so any model
works. :func:`estimate_configured` costs a model as a method set it up (which parameters
require grad, which convs are ``FilteredConv2d``); :func:`estimate` sets a copy of a plain
model up for the paper's "#Layers + patch size" (or explicit layer names) and costs that.

Conventions (docs/paper.md "Cost columns"), per image, float32 (4 bytes), KB = 1024 B:

* Memory = the inputs of the trainable convs kept for backward: C_in*H_in*W_in values for
  vanilla BP, C_in*ceil(H_out/r)*ceil(W_out/r) for a filtered layer (the patch grid of its
  output). Shortcut convs are counted separately even though they read the same tensor as
  their block's first conv: that is what makes ResNet-18 'All' 8.33 MB (6.99 MB without).
* FLOPs = multiplications and additions of the backward of the trainable layers and the
  classifier, with Co, Ci (per group), k x k kernel, HW = H_out*W_out, L = patches:
  - classifier: 3*in*out (the paper's worked cell);
  - filtered, per layer: averaging g_y, Co*(HW + L) (sum every element, divide once per
    patch); weight gradient, Co*Ci*(2L - 1) (one length-L dot product, shared by every tap);
    grad_x when an earlier layer trains, Ci*L*(2Co - 1) on the patch grid plus
    Co*Ci*(k^2 - 1) for the kernel sums. Strided layers do this once per stride phase, and
    dilated layers in grid mode keep all k^2 taps (see gradfilt.functional);
  - vanilla, per layer: grad_x 2*Co*Ci*k^2*HW; weight gradient (k^2 + 1)*Co*Ci*HW. The
    latter is what the paper's vanilla cells imply (128.25M for one 512x512 3x3 layer at 7x7
    is 10*Co*Ci*HW within 0.2%, not the 2*k^2*HW a dot-product count would give); we use it
    to stay comparable with the published columns.
* "#Layers = N" is the last N main-path convs (``last_convs(main_path=True)``) plus the
  classifier: the paper's 3- and 4-layer ResNet cells count layer4.0.conv2 and conv1, not the
  shortcut conv. 'all' trains every layer.
* Which layers take part in the backward comes from autograd itself (a traced forward pass
  with the parameters' ``requires_grad`` as set): a conv or linear layer is counted when its
  weight or bias trains or its input needs a gradient. A frozen layer whose input needs a
  gradient (a trainable layer lies below it) costs its grad_x and keeps nothing; a layer whose
  only trainable parameter is its bias costs Co*HW additions per image for the bias gradient
  and keeps no input (a bias gradient needs only g_y). Bias gradients of layers whose weight
  trains are not counted, as in the published cells.
* A :class:`~gradfilt.sparse.SparseConv2d` whose weight trains on n of its channels (sparse
  update; layer type ``conv-sparse``) keeps those n input channels, n*H_in*W_in values, and its
  weight gradient costs (k^2 + 1)*Co*n*HW ((k^2 + 1)*n*HW for a depthwise conv, whose n are
  output channels); with no channels it is a bias-only layer (``conv-bias``).
* A :class:`~gradfilt.emp.PrunedConv2d` (error-map pruning; layer type ``conv-emp``) costs the
  backward above on its ceil(alpha * C_out) kept output channels plus scoring them once per step
  (C_out * (C_in/g * k^2 + B * H_out * W_out) + 3 * C_out additions); it keeps what the unpruned
  layer keeps (x, or x~ when it filters): any channel may be kept.
* Trainable normalization parameters (BatchNorm, GroupNorm, ...) are outside this convention
  (it counts conv inputs and conv / linear FLOPs); the report lists those layers in
  ``uncounted`` instead of leaving them out silently, and :func:`measure` sees their bytes.
* Batch B > 1 scales every per-image term by B; the weight-gradient reductions over the
  batch become 2*B*L - 1 (filtered) and the kernel sums are per step, not per image.

This reproduces Table 11's FLOPs within 0.5% and Table 2's memory cells exactly. The
MobileNetV2 and MCUNet 'All' memory cells (24.33 MB, 9.17 MB) do not follow from counting
every conv input (25.81 MB and 9.89 MB here); we report our count.

*Forward FLOPs* (``CostReport.forward_flops``, for whole-training counts) are those of every conv
and linear layer the forward pass runs: 2 * C_out * C_in/g * k^2 per output pixel, 2 * in * out per
linear layer, plus one addition per input value for the patch sums a trained filtered conv keeps.
*Overhead FLOPs* (``CostReport.overhead_flops``) are what a method spends per step outside the main
network (early instance filtering's filter network, which sees every instance); *training FLOPs*
(:func:`training_flops`) combine the three with the share of instances the main network trains on.

:func:`measure` complements the analysis with what autograd really keeps (BN and
activations included), through ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules.batchnorm import _BatchNorm

from .chain import SAVED_CATEGORY
from .conv import FilteredConv2d
from .emp import PrunedConv2d
from .freeze import freeze
from .fuse import fuse_bn
from .functional import axis_modes, check_patch_size, filter_geometry
from .install import install_filters
from .models import ARCHS, build_model
from .sparse import SparseConv2d
from .trace import LayerCall, trace_layers

__all__ = ["LayerCost", "CostReport", "training_flops", "conv_cost", "forward_cost", "pruned_conv_cost", "emp_conv_cost",
           "linear_cost", "estimate", "estimate_configured", "measure",
           "print_report", "format_flops", "format_bytes", "main"]

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
    """Backward FLOPs of a :class:`~gradfilt.emp.PrunedConv2d`: its backward (exact or filtered) on the
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


def _image_size(image_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(h, w) < 1:
        raise ValueError(f"image size must be >= 1, got {image_size!r}")
    return h, w


def _check_batch(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _trace(model: nn.Module, h: int, w: int, in_channels: int) -> list[LayerCall]:
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


def estimate(
    model: nn.Module,
    image_size: Union[int, Sequence[int]] = 224,
    trainable: Union[int, str, Sequence[str]] = "all",
    patch_size: Union[None, int, Mapping[str, int]] = None,
    batch_size: int = 1,
    in_channels: int = 3,
) -> CostReport:
    """Analytical backward FLOPs and activation memory of a plain model trained the paper's way.

    A copy of ``model`` is set up (the model itself is not changed) and costed with
    :func:`estimate_configured`: for N or 'all' by :class:`gradfilt.methods.Vanilla` /
    :class:`~gradfilt.methods.GradientFilter`, the same code a training run uses.

    Args:
        model: any model taking a (B, in_channels, H, W) batch.
        image_size: S or (H, W).
        trainable: N (the paper's "#Layers": last N main-path convs + the classifier), 'all', or
            explicit Conv2d / Linear layer names (everything else frozen).
        patch_size: the gradient filter's r for the trainable convs; None for vanilla BP; or a
            mapping conv name -> r (convs not in it use vanilla BP).
        batch_size: images per step (the paper uses 1).
        in_channels: channels of the input image.
    """
    from .methods import GradientFilter, Vanilla

    per_layer = dict(patch_size) if isinstance(patch_size, Mapping) else None
    for r in per_layer.values() if per_layer is not None else [patch_size]:
        if r is not None:
            check_patch_size(r)
    _check_batch(batch_size)
    h, w = _image_size(image_size)
    calls = _trace(model, h, w, in_channels)
    layer_names = {c.name for c in calls}
    conv_names = {c.name for c in calls if isinstance(c.module, nn.Conv2d)}
    if per_layer is not None:
        unknown = sorted(set(per_layer) - conv_names)
        if unknown:
            raise ValueError(f"patch sizes given for {unknown}, which are not traced Conv2d layers")
    copy_ = copy.deepcopy(model)
    example = torch.zeros(1, in_channels, h, w)
    if isinstance(trainable, str) and trainable != "all" or not isinstance(trainable, (int, str, Sequence)):
        raise ValueError(f"trainable must be an int, 'all' or a list of layer names, got {trainable!r}")
    if isinstance(trainable, (int, str)) and not isinstance(trainable, bool):
        if per_layer is None:
            method = Vanilla(layers=trainable) if patch_size is None else GradientFilter(trainable, patch_size)
            method.apply(copy_, example)
        else:
            convs, paths = Vanilla(layers=trainable).plan(copy_, example)
            install_filters(copy_, [{"path": n, "patch_size": r, "type": "conv"}
                                    for n, r in per_layer.items() if n in convs])
            freeze(copy_, paths)
    else:
        if not all(isinstance(n, str) for n in trainable):
            raise ValueError(f"trainable must be an int, 'all' or a list of layer names, got {trainable!r}")
        unknown = sorted(set(trainable) - layer_names)
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; traced Conv2d/Linear layers: {sorted(layer_names)}")
        sizes = per_layer if per_layer is not None else {n: patch_size for n in trainable if n in conv_names}
        install_filters(copy_, [{"path": n, "patch_size": r, "type": "conv"}
                                for n, r in sizes.items() if r is not None and n in trainable])
        freeze(copy_, ["", *(f"~{n}" for n in trainable)])
    report = estimate_configured(copy_, (h, w), batch_size, in_channels)
    report.patch_size = per_layer if per_layer is not None else patch_size
    return report


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
    _check_batch(batch_size)
    h, w = _image_size(image_size)
    layers = []
    forward = 0
    for call in _trace(model, h, w, in_channels):
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


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU)


def _category(module: Optional[nn.Module]) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, _BatchNorm):
        return "batchnorm"
    if isinstance(module, _ACTIVATIONS):
        return "activation"
    if isinstance(module, nn.Linear):
        return "linear"
    return "other"


def measure(model: nn.Module, batch: Tensor) -> dict[str, int]:
    """Bytes autograd really saves in one forward/backward, split by the layer type that saved them.

    Args:
        model: the model, with its requires_grad flags and filters as they will train.
        batch: an input batch.

    Returns:
        Bytes per category ('conv', 'batchnorm', 'activation', 'linear', 'other') and 'total'.
        Each storage is counted once (autograd often saves one tensor in two places);
        parameters are not activations and are not counted.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    stack: list[nn.Module] = []
    seen: set[int] = set()
    totals = dict.fromkeys(["conv", "batchnorm", "activation", "linear", "other"], 0)
    leaves = [m for m in model.modules() if not list(m.children())]

    def enter(module: nn.Module, args) -> None:
        stack.append(module)

    def leave(module: nn.Module, args, output) -> None:  # must return None: a value would replace the output
        stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in leaves]
    handles += [m.register_forward_hook(leave) for m in leaves]

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            # a patch-grid block saves its tensors after its layers ran: they carry their layer type
            category = getattr(t, SAVED_CATEGORY, None) or _category(stack[-1] if stack else None)
            totals[category] += t.untyped_storage().nbytes()
        return t

    try:
        with saved_tensors_hooks(pack, lambda t: t):
            out = model(batch)
        out.float().sum().backward()
    finally:
        for h in handles:
            h.remove()
    totals["total"] = sum(totals.values())
    return totals


def _units(value: float, names: Sequence[str], base: int) -> str:
    for name in names[:-1]:
        if value < base:
            return f"{value:.2f}{name}"
        value /= base
    return f"{value:.2f}{names[-1]}"


def format_flops(flops: int) -> str:
    return _units(flops, ["", "K", "M", "G", "T"], 1000)


def format_bytes(nbytes: int) -> str:
    return _units(nbytes, ["B", "KB", "MB", "GB"], 1024)


def _layers_arg(value: str) -> Union[int, str]:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 0 or 'all', got {value!r}") from None


def _measured(model: nn.Module, batch: Tensor, name: str = "as configured") -> dict[str, dict[str, int]]:
    """Saved bytes of the model as set up and, if it has BatchNorm, of a copy with BN folded."""
    out = {name: measure(model, batch)}
    if any(isinstance(m, _BatchNorm) for m in model.modules()):
        fused = copy.deepcopy(model)
        fuse_bn(fused, batch)
        out[f"{name}, BN folded"] = measure(fused, batch)
    return out


def print_report(report: CostReport, measured: Optional[dict[str, dict[str, int]]] = None,
                 notes: str = "") -> None:
    """Print a cost report as a Markdown table and its totals (and measured bytes, if given).

    Args:
        report: what :func:`estimate` / :meth:`gradfilt.methods.Method.cost` returned.
        measured: setup name -> :func:`measure` result.
        notes: the method's own summary (:meth:`gradfilt.methods.Method.summary`), printed after the totals.
    """
    print("| layer | type | input | output | patch | grad_x | backward FLOPs | memory |\n"
          "|---|---|---|---|---|---|---|---|")
    for layer in report.layers:
        print(f"| {layer.name} | {layer.type} | {'x'.join(map(str, layer.in_shape))} | "
              f"{'x'.join(map(str, layer.out_shape))} | {layer.patch_size or '-'} | "
              f"{'yes' if layer.needs_grad_input else 'no'} | {format_flops(layer.flops)} | "
              f"{format_bytes(layer.activation_bytes)} |")
    overhead = (f"overhead FLOPs (outside the main network): {format_flops(report.overhead_flops)}  "
                if report.overhead_flops else "")
    print(f"\ntotal backward FLOPs: {format_flops(report.backward_flops)}  "
          f"forward FLOPs (every conv and linear layer): {format_flops(report.forward_flops)}  {overhead}"
          f"activation memory (conv inputs): {format_bytes(report.activation_bytes)}  "
          f"trainable parameters: {report.trainable_params:,}  batch {report.batch_size}")
    if report.uncounted:
        print(f"not in the paper's convention (trainable normalization layers, see --measure): "
              f"{len(report.uncounted)} layers, e.g. {', '.join(report.uncounted[:3])}")
    if notes:
        print(notes)
    for setup, values in (measured or {}).items():
        print(f"measured saved for backward ({setup}): " + ", ".join(f"{k} {format_bytes(v)}" for k, v in values.items()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: python -m gradfilt.cost --arch resnet18 --num-classes 10 --layers 2 --patch-size 2."""
    from .methods import GradientFilter, Vanilla

    parser = argparse.ArgumentParser(prog="python -m gradfilt.cost", description=__doc__.split("\n\n")[0],
                                     epilog="The cost of a configured classification run: python -m classification "
                                            "cost --config ... (the same overrides as fit).")
    parser.add_argument("--arch", required=True, help=f"one of {sorted(ARCHS)}")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--image-size", type=int, nargs="+", default=[224], metavar="S", help="S or H W")
    parser.add_argument("--layers", type=_layers_arg, default="all", help="N (the paper's #Layers) or all")
    parser.add_argument("--patch-size", type=int, default=None, help="gradient filter r (omit for vanilla BP)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--measure", action="store_true",
                        help="also run one real step and report the bytes autograd saves (conv / BN / activation / "
                             "...), as set up and with BN folded; with --patch-size for vanilla BP, the per-layer "
                             "filters and the patch-grid filters side by side")
    args = parser.parse_args(argv)
    if len(args.image_size) not in (1, 2):
        parser.error(f"--image-size takes S or H W, got {args.image_size}")
    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    setups = {"vanilla": lambda: Vanilla(layers=args.layers)}
    if args.patch_size is not None:
        setups = {"vanilla": setups["vanilla"],
                  "per-layer filtered": lambda: GradientFilter(layers=args.layers, patch_size=args.patch_size,
                                                               patch_grid=False),
                  "patch-grid filtered": lambda: GradientFilter(layers=args.layers, patch_size=args.patch_size)}
    try:
        _check_batch(args.batch_size)
        h, w = _image_size(size)
        _trace(build_model(args.arch, args.num_classes), h, w, 3)  # a too-small image is a usage error, first
        models = {}
        for name, make in setups.items():
            torch.manual_seed(0)
            models[name] = (build_model(args.arch, args.num_classes), make())
            models[name][1].apply(models[name][0], torch.zeros(1, 3, h, w))
    except ValueError as err:
        parser.error(str(err))
    model, method = models[list(setups)[-1]]  # the method asked for
    report = method.cost(model, (h, w), args.batch_size)
    result = report.to_dict() | {"method": method.tag}
    if args.measure:
        batch = torch.randn(args.batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
        result["measured_bytes"] = {}
        for name, (each, _) in models.items():
            result["measured_bytes"] |= _measured(each.train(), batch, name)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(report, result.get("measured_bytes"), method.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
