"""Which blocks can run their backward on the patch grid: the checks on a block's program."""

from __future__ import annotations

from typing import Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.filtered import FilteredConv2d
from ..surgery.blocks import BLOCKS, Program, block_program

__all__ = ["Unsupported", "layer_kind", "layer_problem", "checked_program"]


class Unsupported(ValueError):
    """Why a block cannot run its backward on the patch grid."""


def layer_kind(module: nn.Module) -> str:
    """conv / bn / act / identity for a layer a program may hold (see :func:`layer_problem`)."""
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, _BatchNorm):
        return "bn"
    return "act" if type(module) in (nn.ReLU, nn.ReLU6, nn.Hardtanh) else "identity"


def layer_problem(path: str, module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot be a layer of a patch-grid program (None if it can)."""
    if isinstance(module, nn.Conv2d):
        if type(module).forward not in (nn.Conv2d.forward, FilteredConv2d.forward):
            return f"{path}: {type(module).__name__} overrides Conv2d.forward"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return f"{path}: padding {module.padding!r} / {module.padding_mode!r} (integer zero padding only)"
        return None
    if isinstance(module, _BatchNorm):
        if any(p.requires_grad for p in module.parameters()):
            return (f"{path}: the BatchNorm trains its affine parameters (their gradient needs the full-resolution "
                    f"normalized input)")
        if not module.track_running_stats:
            return f"{path}: the BatchNorm keeps no running statistics"
        return None
    if type(module) in (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity):
        return None
    return (f"{path or 'the block'}: {type(module).__name__} has no patch-grid backward (known: Conv2d, BatchNorm "
            f"in eval mode, ReLU, ReLU6, Hardtanh, Identity)")


def _conv_module_problem(path: str, module: nn.Module) -> Optional[str]:
    """Why an mmcv ConvModule's forward is not the conv-norm-act sequence its program lists (None if it is)."""
    where = path or "the block"
    if module.with_explicit_padding:
        pad = type(module.padding_layer).__name__
        return f"{where}: ConvModule pads with a {pad} layer (integer zero padding only)"
    if getattr(module, "efficient_conv_bn_eval_forward", None) is not None:
        return f"{where}: ConvModule runs its BatchNorm fused into the conv (efficient_conv_bn_eval)"
    return None


def checked_program(block: nn.Module) -> Program:
    """The registered program of ``block`` (:mod:`gradfilt.surgery.blocks`), checked layer by layer in forward
    order for a patch-grid backward; :class:`Unsupported` says why not (no program for its class, layers not
    where the program looks, a layer without a patch-grid backward)."""
    try:
        program = block_program(block)
    except KeyError:
        raise Unsupported(f"no patch-grid program for {type(block).__name__}; known blocks: {sorted(BLOCKS)}") from None
    except AttributeError as err:  # e.g. timm's BasicBlock: another layout under the same class name
        raise Unsupported(f"its layers are not where the {type(block).__name__} program looks for them ({err})"
                          ) from None
    seen = set()
    for node in program.nodes:
        if node.kind != "layer":
            continue
        parts = node.path.split(".") if node.path else []
        for depth in range(len(parts)):  # the containers the program expanded to reach this layer, outermost first
            path = ".".join(parts[:depth])
            container = block.get_submodule(path)
            if path not in seen and type(container).__name__ == "ConvModule":
                problem = _conv_module_problem(path, container)
                if problem:
                    raise Unsupported(problem)
            seen.add(path)
        module = block.get_submodule(node.path)
        problem = (_conv_module_problem(node.path, module) if type(module).__name__ == "ConvModule"
                   else layer_problem(node.path, module))
        if problem:
            raise Unsupported(problem)
    return program
