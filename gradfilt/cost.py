"""Backward FLOPs and activation memory of a training strategy, in the paper's conventions.

Shapes come from one traced forward pass (:func:`gradfilt.trace.trace_layers`), so any model
works. A strategy is a set of trainable layers and a patch size (None: vanilla BP).

Conventions (shared/PAPER.md "Cost columns"), per image, float32 (4 bytes), KB = 1024 B:

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
* Batch B > 1 scales every per-image term by B; the weight-gradient reductions over the
  batch become 2*B*L - 1 (filtered) and the kernel sums are per step, not per image.

This reproduces Table 11's FLOPs within 0.5% and Table 2's memory cells exactly. The
MobileNetV2 and MCUNet 'All' memory cells (24.33 MB, 9.17 MB) do not follow from counting
every conv input (25.81 MB and 9.89 MB here); we report our count.

:func:`measure` complements the analysis with what autograd really keeps (BN and
activations included), through ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules.batchnorm import _BatchNorm

from .conv import FilteredConv2d
from .freeze import freeze, last_convs
from .fuse import fuse_bn
from .functional import axis_modes, check_patch_size
from .install import install_filters
from .models import ARCHS, build_model
from .trace import LayerCall, trace_layers

__all__ = ["LayerCost", "CostReport", "conv_cost", "estimate", "estimate_configured", "measure", "main"]

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

    def to_dict(self) -> dict:
        return asdict(self)


def conv_cost(call: LayerCall, patch_size: Optional[int], grad_input: bool, batch: int) -> tuple[int, int]:
    """(backward FLOPs, bytes kept for backward) of one trainable conv, formulas in the module docstring.

    Args:
        call: the traced layer (module and shapes without batch).
        patch_size: r, or None for vanilla BP.
        grad_input: whether its grad_x is computed (an earlier layer trains).
        batch: images per step.
    """
    conv = call.module
    c_in, h_in, w_in = call.in_shape
    c_out, h_out, w_out = call.out_shape
    c_in_g = c_in // conv.groups
    c_out_g = c_out // conv.groups
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    hw = h_out * w_out
    if patch_size is None:
        flops = batch * (taps + 1) * c_out * c_in_g * hw
        if grad_input:
            flops += batch * 2 * c_out * c_in_g * taps * hw
        return flops, batch * c_in * h_in * w_in * FLOAT_BYTES
    modes = axis_modes(conv.stride, conv.dilation, patch_size)
    kept, phases = 1, 1
    for mode, k, s in zip(modes, conv.kernel_size, conv.stride):
        kept *= k if mode == "grid" else 1
        phases *= 1 if mode == "grid" else s
    patches = math.ceil(h_out / patch_size) * math.ceil(w_out / patch_size)
    flops = batch * c_out * (hw + patches)  # averaging g_y
    flops += c_out * c_in_g * kept * (2 * batch * patches - 1)  # weight gradient on the patch grid
    if grad_input:
        flops += batch * phases * c_in * patches * (2 * c_out_g * kept - 1)
        flops += c_out * c_in_g * (taps - phases * kept)  # kernel sums per phase
    return flops, batch * c_in * patches * FLOAT_BYTES


def _select(model: nn.Module, calls: list[LayerCall], trainable: Union[int, str, Sequence[str]],
            example_input: Tensor) -> set[str]:
    linears = [c.name for c in calls if isinstance(c.module, nn.Linear)]
    classifier = linears[-1:]
    if trainable == "all":
        return {c.name for c in calls}
    if isinstance(trainable, int) and not isinstance(trainable, bool):
        return set(last_convs(model, trainable, example_input, main_path=True)) | set(classifier)
    if isinstance(trainable, str) or not all(isinstance(n, str) for n in trainable):
        raise ValueError(f"trainable must be an int, 'all' or a list of layer names, got {trainable!r}")
    known = {c.name for c in calls}
    unknown = sorted(set(trainable) - known)
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; traced Conv2d/Linear layers: {sorted(known)}")
    return set(trainable)


def estimate(
    model: nn.Module,
    image_size: Union[int, Sequence[int]] = 224,
    trainable: Union[int, str, Sequence[str]] = "all",
    patch_size: Union[None, int, Mapping[str, int]] = None,
    batch_size: int = 1,
    in_channels: int = 3,
) -> CostReport:
    """Analytical backward FLOPs and activation memory of a strategy.

    Args:
        model: any model taking a (B, in_channels, H, W) batch.
        image_size: S or (H, W).
        trainable: N (the paper's "#Layers": last N main-path convs + the classifier), 'all', or
            explicit layer names.
        patch_size: the gradient filter's r for the trainable convs; None for vanilla BP; or a
            mapping conv name -> r (convs not in it use vanilla BP).
        batch_size: images per step (the paper uses 1).
        in_channels: channels of the input image.
    """
    per_layer = dict(patch_size) if isinstance(patch_size, Mapping) else None
    for r in per_layer.values() if per_layer is not None else [patch_size]:
        if r is not None:
            check_patch_size(r)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(h, w) < 1:
        raise ValueError(f"image size must be >= 1, got {image_size!r}")
    example = torch.zeros(1, in_channels, h, w)
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
    chosen = _select(model, calls, trainable, example)
    layers, earlier_trainable = [], False
    for call in calls:
        if call.name in chosen:
            if isinstance(call.module, nn.Conv2d):
                r = per_layer.get(call.name) if per_layer is not None else patch_size
                flops, nbytes = conv_cost(call, r, earlier_trainable, batch_size)
                layers.append(LayerCost(call.name, "conv", call.in_shape, call.out_shape, r,
                                        earlier_trainable, flops, nbytes))
            else:
                fan_in, fan_out = call.in_shape[-1], call.out_shape[-1]
                layers.append(LayerCost(call.name, "linear", call.in_shape, call.out_shape, None,
                                        earlier_trainable, 3 * batch_size * fan_in * fan_out, 0))
            earlier_trainable = True
    if per_layer is not None:
        unknown = sorted(set(per_layer) - {c.name for c in calls if isinstance(c.module, nn.Conv2d)})
        if unknown:
            raise ValueError(f"patch sizes given for {unknown}, which are not traced Conv2d layers")
    return CostReport(
        backward_flops=sum(layer.flops for layer in layers),
        activation_bytes=sum(layer.activation_bytes for layer in layers),
        batch_size=batch_size,
        patch_size=per_layer if per_layer is not None else patch_size,
        layers=layers,
    )


def estimate_configured(
    model: nn.Module, image_size: Union[int, Sequence[int]] = 224, batch_size: int = 1, in_channels: int = 3
) -> CostReport:
    """:func:`estimate` for a model already set up for training: the trainable layers are the
    Conv2d/Linear layers whose weight requires grad, the patch sizes those of its FilteredConv2d.
    Layers the forward pass does not run (e.g. an auxiliary head used only by a loss) are not counted.

    Args:
        model: a model after ``freeze`` / ``install_filters`` (or any equivalent set-up).
        image_size: S or (H, W).
        batch_size: images per step.
        in_channels: channels of the input image.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    ran = {c.name for c in trace_layers(model, input_size=(1, in_channels, h, w))}
    trainable = [n for n, m in model.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad and n in ran]
    patches = {n: m.patch_size for n, m in model.named_modules() if isinstance(m, FilteredConv2d) and n in trainable}
    return estimate(model, image_size, trainable, patches, batch_size, in_channels)


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
            totals[_category(stack[-1] if stack else None)] += t.untyped_storage().nbytes()
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


def _trainable_arg(value: str) -> Union[int, str]:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 0 or 'all', got {value!r}") from None


def _measured(model: nn.Module, batch: Tensor) -> dict[str, dict[str, int]]:
    """Saved bytes of the model as set up and, if it has BatchNorm, of a copy with BN folded."""
    out = {"as configured": measure(model, batch)}
    if any(isinstance(m, _BatchNorm) for m in model.modules()):
        fused = copy.deepcopy(model)
        fuse_bn(fused, batch)
        out["fuse_bn"] = measure(fused, batch)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: python -m gradfilt.cost --arch resnet18 --num-classes 10 --trainable-layers 2 --patch-size 2."""
    parser = argparse.ArgumentParser(prog="python -m gradfilt.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", help=f"one of {sorted(ARCHS)}")
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="classification config(s), composed in order, instead of --arch ... --patch-size")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--image-size", type=int, nargs="+", default=[224], metavar="S", help="S or H W")
    parser.add_argument("--trainable-layers", type=_trainable_arg, default="all", help="N (paper's #Layers) or all")
    parser.add_argument("--patch-size", type=int, default=None, help="gradient filter r (omit for vanilla BP)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--measure", action="store_true",
                        help="also run one real step and report saved bytes, as set up and with BN folded")
    args = parser.parse_args(argv)
    if (args.arch is None) == (not args.config):
        parser.error("give either --arch (with --num-classes, --image-size, ...) or --config, exactly one")
    if len(args.image_size) not in (1, 2):
        parser.error(f"--image-size takes S or H W, got {args.image_size}")
    try:
        if args.config:
            # the classification experiment code is only needed for this option
            from classification.cli import configured_model, resolve_config

            module = configured_model(resolve_config([a for f in args.config for a in ("--config", f)]))
            model, size = module.model, module.hparams.image_size
            report = estimate_configured(model, size, args.batch_size)
            module.train()  # the run's train/eval flags (bn_eval, frozen BN)
        else:
            model = build_model(args.arch, args.num_classes)
            size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
            report = estimate(model, size, args.trainable_layers, args.patch_size, args.batch_size)
            if args.measure:
                freeze(model, ["", *(f"~{layer.name}" for layer in report.layers)])
                if args.patch_size is not None:
                    install_filters(model, [{"path": layer.name, "patch_size": args.patch_size, "type": "conv"}
                                            for layer in report.layers if layer.type == "conv"])
                model.train()
    except ValueError as err:
        parser.error(str(err))
    result = report.to_dict()
    if args.measure:
        h, w = (size, size) if isinstance(size, int) else size
        result["measured_bytes"] = _measured(model, torch.randn(args.batch_size, 3, h, w))
    if args.json:
        print(json.dumps(result))
        return 0
    print("| layer | input | output | patch | grad_x | backward FLOPs | memory |\n|---|---|---|---|---|---|---|")
    for layer in report.layers:
        print(f"| {layer.name} | {'x'.join(map(str, layer.in_shape))} | {'x'.join(map(str, layer.out_shape))} | "
              f"{layer.patch_size or '-'} | {'yes' if layer.needs_grad_input else 'no'} | "
              f"{format_flops(layer.flops)} | {format_bytes(layer.activation_bytes)} |")
    print(f"\ntotal backward FLOPs: {format_flops(report.backward_flops)}  "
          f"activation memory (conv inputs): {format_bytes(report.activation_bytes)}  batch {report.batch_size}")
    if args.measure:
        for setup, measured in result["measured_bytes"].items():
            print(f"measured saved for backward ({setup}): "
                  + ", ".join(f"{k} {format_bytes(v)}" for k, v in measured.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
