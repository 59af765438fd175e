"""The patch-grid block module (:class:`PatchGridBlock`) and its installer (:func:`install_patch_grid`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.filtered import FilteredConv2d
from ..surgery.blocks import BLOCKS, layers_of
from ..surgery.freeze import bn_runs_eval
from ..surgery.fuse import evaluating
from ..surgery.paths import join_path, replace_module
from .carried import Slot
from .function import ChainFn, run_program
from .program import Unsupported, checked_program, layer_problem

__all__ = ["PatchGridBlock", "PatchGridReport", "plan_patch_grid", "install_patch_grid"]


class PatchGridBlock(nn.Module):
    """A block whose backward runs on the patch grid (see the module docstring); forward is the block's own.

    Args:
        block: a block of a registered class (:data:`BLOCKS`); its children become this module's
            children under the same names, so parameter paths and state_dict keys do not change. Its
            layers are looked up by path on every call, so later swaps (folding BatchNorm, a new patch
            size) are seen.

    Raises:
        ValueError (saying why) for a block of an unregistered class or whose layers have no patch-grid
        backward.
    """

    def __init__(self, block: nn.Module) -> None:
        name = type(block).__name__
        nodes = checked_program(block).nodes  # Unsupported (a ValueError) says why not
        super().__init__()
        for child_name, child in block.named_children():
            self.add_module(child_name, child)
        self.training = block.training  # the children keep their own flags (a frozen BatchNorm stays in eval)
        self.block_type = name
        self.nodes = nodes
        self.path = ""  # where the block sits in its model (set by the installer), for messages
        self.per_layer_now: Optional[str] = None  # why the last training step ran per layer (None: on the grid)

    def _problem(self, x: Tensor, modules: list[Optional[nn.Module]]) -> Optional[str]:
        """Why this call cannot take the patch-grid backward (None if it can)."""
        if not (self.training and torch.is_grad_enabled()):
            return "no training step"
        if torch.is_autocast_enabled(x.device.type):
            return "autocast"
        for node, module in zip(self.nodes, modules):
            if module is not None:
                problem = layer_problem(node.path, module)
                if problem is None and isinstance(module, _BatchNorm) and not bn_runs_eval(module):
                    problem = f"{node.path}: the BatchNorm normalizes with batch statistics"
                if problem:
                    return problem
        return None

    def forward(self, x: Tensor) -> Tensor:
        modules = layers_of(self, self.nodes)
        trained = [(i, name) for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)
                   for name in ("weight", "bias") if getattr(m, name) is not None and getattr(m, name).requires_grad]
        if not trained and not x.requires_grad:  # nothing to backpropagate: the per-layer forward
            return run_program(self.nodes, modules, x, [False] * (len(self.nodes) + 1), set())[0]
        problem = self._problem(x, modules)
        if problem != "no training step":
            self.per_layer_now = problem
            if problem is not None:  # once per block and reason (Python shows a repeated warning once)
                warnings.warn(f"patch-grid block {self.path or self.block_type} runs its backward per layer: {problem}",
                              stacklevel=2)
        if problem is not None:  # the per-layer forward
            return run_program(self.nodes, modules, x, [False] * (len(self.nodes) + 1), set())[0]
        params = [getattr(modules[i], name) for i, name in trained]
        below = getattr(x, "_gradfilt_slot", None)
        if below is not None and (id(x.grad_fn) != below.node or x._version != below.version):
            below = None  # x was changed after the block below wrote it: hand autograd the full gradient
        slot = Slot()
        out = ChainFn.apply(self.nodes, modules, trained, slot, below, x, *params)
        slot.node, slot.version = id(out.grad_fn), out._version
        out._gradfilt_slot = slot
        return out

    def extra_repr(self) -> str:
        return f"block_type={self.block_type}"


@dataclass
class PatchGridReport:
    """What :func:`install_patch_grid` did.

    Attributes:
        blocks: dotted paths of the blocks whose backward now runs on the patch grid.
        per_layer: filtered convs left on the per-layer path -> why.
    """

    blocks: list[str] = field(default_factory=list)
    per_layer: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as text lines."""
        out = [f"patch-grid backward: {', '.join(self.blocks) if self.blocks else 'no block'}"]
        out += [f"per-layer filtered backward: {conv} ({why})" for conv, why in self.per_layer.items()]
        return out


def _block_inputs(model: nn.Module, example_input: Tensor, blocks: dict[str, nn.Module]) -> dict[str, Tensor]:
    """The first input each block sees in one eval-mode forward of ``example_input`` (flags restored)."""
    seen: dict[str, Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0].clone()))
               for name, m in blocks.items()]
    try:
        with evaluating(model):
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def _check_forward(block: nn.Module, x: Tensor) -> Optional[str]:
    """None if the block's program computes exactly what ``block`` computes on ``x`` (eval mode), else why not."""
    nodes = checked_program(block).nodes
    with evaluating(block):
        expected = block(x.clone())
        got, _, _ = run_program(nodes, layers_of(block, nodes), x.clone(), [True] * (len(nodes) + 1), set())
    if got.shape != expected.shape or not torch.equal(got, expected):
        return "its forward is not the recognised layer sequence (outputs differ)"
    return None


def plan_patch_grid(model: nn.Module, example_input: Tensor) -> tuple[dict[str, PatchGridBlock], PatchGridReport]:
    """Find the blocks holding filtered convs that can run their backward on the patch grid; change nothing.

    Args:
        model: the network, filters installed and frozen as it will train.
        example_input: one input batch, to check each block's forward.

    Returns:
        (dotted path -> replacement, report of what qualifies and why the other filtered convs do not).
    """
    candidates: dict[str, nn.Module] = {}
    filtered_in: dict[str, list[str]] = {}  # candidate -> the filtered convs inside it
    reasons: dict[str, str] = {}
    installed = [name for name, m in model.named_modules() if isinstance(m, PatchGridBlock)]
    for name, module in model.named_modules():
        if type(module).__name__ not in BLOCKS or _under(name, [*candidates, *installed]):
            continue
        filtered = [join_path(name, n) for n, m in module.named_modules() if isinstance(m, FilteredConv2d)]
        if not filtered:
            continue
        try:
            checked_program(module)
        except Unsupported as err:
            for conv in filtered:
                reasons.setdefault(conv, f"{type(module).__name__} {name!r}: {err}")
            continue
        candidates[name], filtered_in[name] = module, filtered
    inputs = _block_inputs(model, example_input, candidates)
    plan: dict[str, PatchGridBlock] = {}
    covered: set[str] = set()
    for name, module in candidates.items():
        filtered = filtered_in[name]
        why = "the example batch never reaches it" if name not in inputs else _check_forward(module, inputs[name])
        if why is None:
            plan[name] = PatchGridBlock(module)
            plan[name].path = name
            covered.update(filtered)
        else:
            reasons.update({conv: f"{type(module).__name__} {name!r}: {why}" for conv in filtered})
    report = PatchGridReport(blocks=list(plan))
    for conv, m in model.named_modules():
        if isinstance(m, FilteredConv2d) and conv not in covered and not _under(conv, installed):
            report.per_layer[conv] = reasons.get(conv, "not inside a block with a patch-grid program "
                                                       f"(known: {', '.join(sorted(BLOCKS))})")
    return plan, report


def _under(name: str, parents: list[str]) -> bool:
    """Whether the dotted path ``name`` lies inside one of ``parents``."""
    return any(name.startswith(p + ".") for p in parents)


def install_patch_grid(model: nn.Module, example_input: Tensor) -> PatchGridReport:
    """Swap every qualifying block that holds a filtered conv for a :class:`PatchGridBlock`, in place.

    Args:
        model: the network, filters installed and frozen as it will train.
        example_input: one input batch, to check each block's forward.

    Returns:
        Which blocks run on the patch grid, and why each other filtered conv stays per layer.
    """
    plan, report = plan_patch_grid(model, example_input)
    for name, block in plan.items():
        replace_module(model, name, block)
    return report
