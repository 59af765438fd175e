"""Exact costs of every configuration of a space, from the cost model (:class:`CostTables`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..cost import conv_cost, emp_conv_cost, image_size_of, linear_cost, traced_calls
from ..surgery.trace import LayerCall, trace_layers
from .latency_model import LatencyModel
from .space import FROZEN, SearchSpace, earliest

__all__ = ["CostTables", "grad_flags", "cost_tables"]


@dataclass
class CostTables:
    """Exact per-layer decomposition of every configuration's costs.

    Attributes:
        space: the search space.
        own: metric -> (K, n_choices, K + 1) cost of layer i with choice c when the earliest trained
            layer is e (entries with c != frozen for i < e are never used).
        rest: metric -> (K + 1,) cost of every other layer (shortcut convs, earlier frozen convs, the
            classifier) given e.
        batch_size: images per step the FLOPs and bytes are counted for.
        alpha: error-map pruning's kept share on the trained dense convs (1: no pruning).
    """

    space: SearchSpace
    own: dict[str, np.ndarray]
    rest: dict[str, np.ndarray]
    batch_size: int = 1
    alpha: float = 1.0

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.own)

    def evaluate(self, configs: Union[Sequence[int], np.ndarray]) -> dict[str, np.ndarray]:
        """metric -> cost of each configuration (rows of ``configs``)."""
        configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
        e = earliest(configs)
        rows = np.arange(configs.shape[1])
        return {m: self.own[m][rows[None, :], configs, e[:, None]].sum(1) + self.rest[m][e] for m in self.metrics}

    @staticmethod
    def fits(costs: Mapping[str, np.ndarray], budgets: Mapping[str, float]) -> np.ndarray:
        """Which of the configurations whose :meth:`evaluate` costs these are stay within every budget."""
        return np.all([np.asarray(costs[m]) <= limit * (1 + 1e-12) for m, limit in budgets.items()], axis=0)


def grad_flags(model: nn.Module, space: SearchSpace, example: Tensor) -> list[dict[str, bool]]:
    """For each earliest trained layer e (K: none), which traced layers' inputs need a gradient."""
    probe = copy.deepcopy(model)
    modules = dict(probe.named_modules())
    flags = []
    for e in range(len(space.layers) + 1):
        for p in probe.parameters():
            p.requires_grad_(False)
        for p in modules[space.classifier].parameters():
            p.requires_grad_(True)
        if e < len(space.layers):
            modules[space.layers[e]].weight.requires_grad_(True)
        flags.append({c.name: c.grad_input for c in trace_layers(probe, example)})
        later = [name for name in space.layers[e + 1:] if not flags[-1][name]]
        if later:
            raise ValueError(f"the searched layers do not form a chain: training {space.layers[e]} gives no "
                             f"gradient to {later}")
    return flags


def cost_tables(model: nn.Module, space: SearchSpace, image_size: Union[int, Sequence[int]],
                batch_size: int = 1, in_channels: int = 3, latency: Optional["LatencyModel"] = None,
                alpha: float = 1.0) -> CostTables:
    """Activation bytes and backward FLOPs (and, with ``latency``, predicted backward ms) of every configuration.

    With ``alpha`` < 1 every trained dense conv is an error-map-pruning layer keeping that share of its
    output channels (:class:`gradfilt.methods.ErrorMapPruning`; FLOPs from
    :func:`gradfilt.cost.emp_conv_cost`, bytes unchanged). Its latency is taken as the unpruned layer's:
    pruning's gain in time depends on the hardware (on a 2-core CPU it measured none), so the latency
    table does not assume one.

    Args:
        model: the network before a method is applied.
        space: the search space.
        image_size: S or (H, W).
        batch_size: images per step for bytes and FLOPs (the paper's columns use 1).
        in_channels: channels of the input image.
        latency: a fitted :class:`LatencyModel`; its table is at the batch it was measured with.
        alpha: error-map pruning's kept share of output channels on the trained dense convs; 1: none.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"alpha (the kept share of output channels) must be in (0, 1], got {alpha!r}")
    h, w = image_size_of(image_size)
    calls = traced_calls(model, h, w, in_channels)
    by_name = {c.name: c for c in calls}
    missing = [n for n in (*space.layers, space.classifier) if n not in by_name]
    if missing:
        raise ValueError(f"layers {missing} of the search space are not run by the model's forward pass")
    flags = grad_flags(model, space, torch.zeros(1, in_channels, h, w))
    k, n = len(space.layers), space.n_choices
    searched = set(space.layers)

    def layer_terms(cost_of: Callable[[LayerCall, Optional[int], bool, bool], float]):
        own = np.zeros((k, n, k + 1))
        rest = np.zeros(k + 1)
        for e, flag in enumerate(flags):
            for i, name in enumerate(space.layers):
                for c in range(n):
                    own[i, c, e] = cost_of(by_name[name], space.patch_size(c), flag[name], c != FROZEN)
            rest[e] = sum(cost_of(call, None, flag[call.name], call.name == space.classifier)
                          for call in calls if call.name not in searched)
        return own, rest

    def flops(call, r, grad_input, trains):
        if isinstance(call.module, nn.Linear):
            return linear_cost(call, grad_input, batch_size, weight=trains)
        if alpha < 1 and trains and call.module.groups == 1:  # ErrorMapPruning prunes the trained dense convs
            return emp_conv_cost(call, alpha, r, grad_input, batch_size)
        return conv_cost(call, r, grad_input, batch_size, weight=trains)[0]

    def kept_bytes(call, r, grad_input, trains):
        return conv_cost(call, r, grad_input, batch_size, weight=trains)[1] if isinstance(call.module, nn.Conv2d) else 0

    own, rest = {}, {}
    own["backward_flops"], rest["backward_flops"] = layer_terms(flops)
    own["activation_bytes"], rest["activation_bytes"] = layer_terms(kept_bytes)
    if latency is not None:
        own["latency_ms"], rest["latency_ms"] = layer_terms(latency.layer_ms)
    return CostTables(space, own, rest, batch_size, float(alpha))
