"""``python -m segmentation.memory CONFIG [--batch N] [--image-size H W] [--frozen-bn] [--cfg-options k=v ...]``.

The bytes autograd really keeps for one training forward of a gradient-filter config's segmentor
(backbone and decode head, random input at the config's crop size): for vanilla BP on the same
layers, for the per-layer filters (``patch_grid=False``) and for the patch-grid filters (the
default), each storage counted once, parameters excluded (:func:`gradfilt.cost.measure`), split
by the layer type that saved it. The paper's convention counts conv inputs only; this is what a
device holds. A config with ``fuse_bn = True`` is measured with its BatchNorms folded, as it trains.
``--frozen-bn`` freezes every BatchNorm the config's layers would train (the patch-grid blocks need
frozen BatchNorms). Ends with the method's patch-grid report (which blocks run on the
patch grid and why the other filtered convs do not).
"""

from __future__ import annotations

import copy
import logging
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gradfilt import GradientFilter
from gradfilt.cost import format_bytes, measure

from .runner import apply_method, configured_method, example_input, fuse_bn_for_config
from .train import load_config, parse_args

__all__ = ["main", "measure_setups"]

SETUPS = ("vanilla", "per-layer filters", "patch-grid filters")


def measure_setups(cfg, batch: int, size: tuple[int, int], frozen_bn: bool = False
                   ) -> tuple[dict[str, dict[str, int]], str]:
    """Saved bytes per setup (:data:`SETUPS`) for ``cfg`` (a gradient_filter config), and the patch-grid report;
    ``frozen_bn``: every BatchNorm frozen (appended to the layer list's ``freeze``).

    Raises:
        ValueError when the config's method is not gradient_filter, or for a batch / size below 1.
    """
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    method = configured_method(cfg)
    if not isinstance(method, GradientFilter):
        raise ValueError(f"segmentation.memory compares the filters of a gradient_filter config; this config's method "
                         f"is {method.tag if method else 'none'}")
    if batch < 1 or min(size) < 1:
        raise ValueError(f"--batch and --image-size must be at least 1, got {batch} and {size}")
    cfg = copy.deepcopy(cfg)  # the setups change its method and layer list
    init_default_scope(cfg.get("default_scope", "mmseg"))
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # not mmengine's line per initialized parameter

    def prepared() -> nn.Module:  # as MethodRunner.build_model: initialized, BatchNorm folded if the config says so
        torch.manual_seed(0)
        net = MODELS.build(cfg.model)
        net.init_weights()
        if cfg.get("fuse_bn"):
            fuse_bn_for_config(net, cfg)
        return net

    net = prepared()  # the first setup's; its BatchNorms (those left after folding) are the ones to freeze
    if frozen_bn:
        bns = [name for name, m in net.named_modules() if isinstance(m, _BatchNorm)]
        cfg.layer_list = {**cfg.layer_list, "freeze": [*cfg.layer_list.get("freeze", [""]), *bns]}
    spec = dict(cfg.method)
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    out, report = {}, ""
    for setup, method_cfg in zip(SETUPS, (dict(type="vanilla"), {**spec, "patch_grid": False},
                                          {**spec, "patch_grid": True})):
        cfg.method = method_cfg  # each takes the config's layer_list as its signature allows
        net = net if setup == SETUPS[0] else prepared()
        method = apply_method(net, cfg)  # then the method, as the runner applies it
        out[setup] = measure(_Logits(net).train(), x)
        report = method.summary() or report
    return out, report


class _Logits(nn.Module):
    """The segmentor as a module of its input alone: the decode head's logits (mmseg's ``tensor`` mode)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, mode="tensor")


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, int]]:
    """Print the table; returns setup -> bytes per layer type."""
    def extra(parser):
        parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8, the configs' batch)")
        parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                            help="input size (default: the config's crop size)")
        parser.add_argument("--frozen-bn", action="store_true",
                            help="freeze every BatchNorm the layer list would train (patch-grid blocks need them "
                                 "frozen)")

    args = parse_args(argv, __doc__.split("\n\n")[0], extra)
    cfg = load_config(args.config, args.work_dir, args.cfg_options)
    size = tuple(args.image_size or example_input(cfg).shape[2:])
    saved, report = measure_setups(cfg, args.batch, size, args.frozen_bn)
    kinds = ["conv", "batchnorm", "activation", "linear", "other", "total"]
    print(f"saved for backward, batch {args.batch}, {size[0]}x{size[1]}"
          f"{', BatchNorms frozen' if args.frozen_bn else ''}\n")
    print("| setup | " + " | ".join(kinds) + " | of vanilla |\n|---|" + "---|" * (len(kinds) + 1))
    for setup, values in saved.items():
        share = values["total"] / saved["vanilla"]["total"]
        print(f"| {setup} | " + " | ".join(format_bytes(values[k]) for k in kinds) + f" | {share:.1%} |")
    if report:
        print(f"\n{report}")
    return saved


if __name__ == "__main__":
    main()
