"""Frozen convs on the gradient path that keep nothing for backward (:func:`lean_frozen_convs`)."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops.sparse import SparseConv2d, is_depthwise
from .paths import replace_module
from .trace import trace_layers

__all__ = ["lean_frozen_convs"]


def lean_frozen_convs(model: nn.Module, example_input: Tensor) -> list[str]:
    """Make the frozen convs on the gradient path keep nothing for backward; returns their names.

    A frozen conv between trained layers still computes grad_x, which needs only its weight, but
    autograd's conv keeps its input too. Each plain dense or depthwise ``nn.Conv2d`` whose input
    needs a gradient and whose parameters are all frozen becomes a :class:`SparseConv2d` with no
    trained channels (the same Parameters, still frozen): same output, same grad_x, no input kept.

    Args:
        model: the network with its trainable parameters set (changed in place).
        example_input: one input batch, for tracing.
    """
    lean = []
    for call in trace_layers(model, example_input):
        conv = call.module
        if (call.grad_input and type(conv) is nn.Conv2d and (conv.groups == 1 or is_depthwise(conv))
                and not any(p.requires_grad for p in conv.parameters())):
            replace_module(model, call.name, SparseConv2d.from_conv(conv, []))
            lean.append(call.name)
    return lean
