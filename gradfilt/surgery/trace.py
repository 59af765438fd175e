"""Trace one forward pass and record every Conv2d / Linear call in execution order.

Shared by ``last_convs`` (the paper's "#Layers") and the cost model, so layer order and
shapes always come from what the model really runs, never from hand-written tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["LayerCall", "trace_layers"]


@dataclass(frozen=True)
class LayerCall:
    """One traced Conv2d or Linear layer (first call only).

    Attributes:
        name: dotted module path.
        module: the module itself.
        in_shape: input shape without the batch dimension, e.g. (C, H, W).
        out_shape: output shape without the batch dimension.
        shortcut: True when the layer is a conv off the main path: no chain of convs from the input to
            the output through it is as long as the longest one (a ResNet downsample conv, also one
            behind an average pool as in timm's "d" ResNets, is one conv beside its block's two).
        grad_input: whether autograd computes a gradient for the layer's input, i.e. the input depends
            on a parameter that requires grad.
    """

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    shortcut: bool
    grad_input: bool = False


def trace_layers(
    model: nn.Module,
    example_input: Optional[Tensor] = None,
    input_size: Sequence[int] = (1, 3, 224, 224),
) -> list[LayerCall]:
    """Run ``model`` once (eval mode, flags restored) and return its Conv2d/Linear calls.

    The pass runs with autograd on (parameters' ``requires_grad`` as set, nothing is updated), so
    that the autograd graph tells which layers lie on the main path and which inputs need a gradient.

    Args:
        model: the model to trace.
        example_input: a batch to run; if None, zeros of ``input_size`` on the model's device/dtype.
        input_size: shape of the zeros batch (batch dimension included).
    """
    names = {m: name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    first: dict[nn.Module, tuple] = {}  # module -> (in shape, out shape, input node, output node)

    def record(module: nn.Module, args, output) -> None:
        if module not in first:
            x = args[0]
            first[module] = (tuple(x.shape[1:]), tuple(output.shape[1:]), x.grad_fn, output.grad_fn)

    if example_input is None:
        param = next(model.parameters(), None)
        example_input = torch.zeros(
            *input_size,
            device=param.device if param is not None else None,
            dtype=param.dtype if param is not None else None,
        )
    leaf = example_input.detach().requires_grad_(True)
    handles = [m.register_forward_hook(record) for m in names]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()  # no BN statistics move while tracing
        with torch.enable_grad():
            out = model(leaf * 1)  # not the leaf itself, so an in-place op on the input stays legal
            roots = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
            convs = {first[m][3]: m for m in first if isinstance(m, nn.Conv2d) and first[m][3] is not None}
            main, trainable = _graph_facts(roots, convs, leaf)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    return [LayerCall(names[m], m, ins, outs, isinstance(m, nn.Conv2d) and node is not None and node not in main,
                      in_node is not None and trainable.get(in_node, False))
            for m, (ins, outs, in_node, node) in first.items()]


def _tensors(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _graph_facts(roots: list, convs: dict, leaf: Tensor) -> tuple[set, dict]:
    """Walk the autograd graph once: (conv nodes on a longest conv chain, node -> depends on a trainable parameter).

    A conv is on the main path when the most convs on a path from an output down to it plus the most
    convs from it down to the input (itself counted once) equal the longest chain in the graph.
    """
    post: list = []  # children before parents
    seen: set = set()
    for root in roots:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                post.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            stack.extend((child, False) for child, _ in node.next_functions if child is not None and child not in seen)
    down, trainable, parents = {}, {}, {}
    for node in post:
        children = [c for c, _ in node.next_functions if c is not None]
        for child in children:
            parents.setdefault(child, []).append(node)
        down[node] = (node in convs) + max((down[c] for c in children), default=0)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf that requires grad
        trainable[node] = (variable is not None and variable is not leaf) or any(trainable[c] for c in children)
    up = {}
    for node in reversed(post):  # parents before children
        up[node] = (node in convs) + max((up[p] for p in parents.get(node, [])), default=0)
    longest = max((down[r] for r in roots), default=0)
    return {n for n in convs if n in down and up[n] + down[n] - 1 == longest}, trainable
