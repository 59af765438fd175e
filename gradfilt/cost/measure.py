"""What autograd really keeps for backward, by layer type (:func:`measure`): BatchNorm and activations
included, through ``torch.autograd.graph.saved_tensors_hooks``; the analysis of :mod:`.counts` counts
conv inputs only."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules.batchnorm import _BatchNorm

from ..patchgrid import SAVED_CATEGORY

__all__ = ["measure"]

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
