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
        shortcut: True when the layer reads a tensor an earlier traced layer already read
            (a ResNet downsample conv reads its block's input, like conv1): not on the main path.
        grad_input: whether autograd computes a gradient for the layer's input (it depends on a
            trainable parameter); only known when traced with ``with_grad=True``, else False.
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
    with_grad: bool = False,
) -> list[LayerCall]:
    """Run ``model`` once (eval mode, flags restored) and return its Conv2d/Linear calls.

    Args:
        model: the model to trace.
        example_input: a batch to run; if None, zeros of ``input_size`` on the model's device/dtype.
        input_size: shape of the zeros batch (batch dimension included).
        with_grad: run with autograd on (the parameters' requires_grad as set) to record which
            layers' inputs need a gradient (``LayerCall.grad_input``); default: no autograd.
    """
    names = {m: name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    calls: dict[nn.Module, LayerCall] = {}
    seen_inputs: list[Tensor] = []  # kept alive so no later tensor can reuse an address

    def record(module: nn.Module, args, output) -> None:
        if module in calls:
            return
        x = args[0]
        shortcut = any(x is t for t in seen_inputs)
        seen_inputs.append(x)
        calls[module] = LayerCall(names[module], module, tuple(x.shape[1:]), tuple(output.shape[1:]), shortcut,
                                  bool(x.requires_grad))

    if example_input is None:
        param = next(model.parameters(), None)
        example_input = torch.zeros(
            *input_size,
            device=param.device if param is not None else None,
            dtype=param.dtype if param is not None else None,
        )
    handles = [m.register_forward_hook(record) for m in names]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()  # no BN statistics move while tracing
        with torch.set_grad_enabled(with_grad):
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    return list(calls.values())
