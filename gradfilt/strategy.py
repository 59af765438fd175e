"""The paper's "#Layers = N" training strategy in one call.

``train_last_layers(model, N, patch_size=r)`` trains the last N main-path convs (execution
order, see :func:`gradfilt.last_convs`) and the classifier (the last ``nn.Linear`` the forward
pass runs), puts gradient filters of patch size r on those convs, and freezes everything
else (frozen BatchNorm stays in eval mode). Shared by the classification experiments and the
latency benchmark so both mean the same thing by "#Layers".
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor, nn

from .freeze import freeze, last_convs
from .install import FilterSpec, install_filters
from .trace import trace_layers

__all__ = ["classifier_name", "train_last_layers"]


def classifier_name(model: nn.Module, example_input: Optional[Tensor] = None,
                    input_size: Sequence[int] = (1, 3, 224, 224)) -> str:
    """Dotted name of the last ``nn.Linear`` the forward pass runs.

    Args:
        model: the network (run once, flags restored).
        example_input: a batch to trace with; if None, zeros of ``input_size``.
        input_size: shape of the zeros batch.
    """
    linears = [c.name for c in trace_layers(model, example_input, input_size) if isinstance(c.module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} runs no nn.Linear classifier")
    return linears[-1]


def train_last_layers(model: nn.Module, n: Union[int, str], patch_size: Optional[int] = None,
                      example_input: Optional[Tensor] = None,
                      input_size: Sequence[int] = (1, 3, 224, 224)) -> list[str]:
    """Set up the paper's "#Layers = n" strategy in place.

    Args:
        model: the network.
        n: how many main-path convs train (plus the classifier); 'all': every layer trains.
        patch_size: gradient filter r on the trained convs (every conv for 'all'); None: vanilla BP.
        example_input: a batch to trace with; if None, zeros of ``input_size``.
        input_size: shape of the zeros batch.

    Returns:
        The names of the trained convs.
    """
    if n == "all":
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    else:
        convs = last_convs(model, n, example_input, input_size, main_path=True)
    if patch_size is not None:
        install_filters(model, [FilterSpec(name, patch_size, "conv") for name in convs])
    if n != "all":
        freeze(model, ["", *(f"~{name}" for name in convs), f"~{classifier_name(model, example_input, input_size)}"])
    return convs
