"""The library's command line: ``python -m gradfilt cost --arch resnet18 --layers 2 --patch-size 2``.

``cost`` prints the backward FLOPs and activation memory of a method on a network in the paper's
convention (``docs/cost_model.md``), optionally with the bytes autograd really keeps (``--measure``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .cost import check_batch, image_size_of, measure, print_report, traced_calls
from .methods import GradientFilter, Vanilla
from .models import ARCHS, build_model
from .surgery.fuse import fuse_bn

__all__ = ["main", "cost_main"]

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


def cost_main(argv: Sequence[str]) -> int:
    """``python -m gradfilt cost --arch resnet18 --num-classes 10 --layers 2 --patch-size 2``.

    Args:
        argv: the arguments after ``cost``.
    """
    parser = argparse.ArgumentParser(prog="python -m gradfilt cost",
                                     description="Backward FLOPs and activation memory of a method on a network, "
                                                 "in the paper's convention.",
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
        check_batch(args.batch_size)
        h, w = image_size_of(size)
        traced_calls(build_model(args.arch, args.num_classes), h, w, 3)  # a too-small image is a usage error, first
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



COMMANDS = {"cost": cost_main}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m gradfilt COMMAND ...``; ``argv`` replaces sys.argv[1:] when given.

    Args:
        argv: the command (one of :data:`COMMANDS`) and its arguments.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog="python -m gradfilt", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=sorted(COMMANDS), help="cost: a method's cost on a network")
    parser.parse_args(argv[:1])  # prints the usage (and exits) for --help, no command or an unknown one
    return 2
