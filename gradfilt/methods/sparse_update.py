"""Sparse update (Lin et al., "On-Device Training Under 256KB Memory", NeurIPS 2022) as a training method.

Configured with tiny-training's vocabulary (``backward_config``):

* ``n_bias_update``: the biases of the last N convs train (``all``: every conv);
* ``n_weight_update``: the weights of the last N convs train, or ``manual_weight_idx``: the weights
  of the listed convs. Convs are counted in forward execution order over every ``nn.Conv2d``
  the forward pass runs, from 0 (shortcut convs included, unlike the paper's "#Layers");
* ``weight_update_ratio``: per weight-updated layer (one value for all, or a list in the order of
  the layers), the fraction (float in (0, 1]) or the number (int >= 1) of input channels whose
  weights train; for a depthwise conv, of output channels;
* ``weight_select_criteria``: which channels, chosen once when the method is applied:
  ``magnitude+`` (largest L2 norm of the channel's weights, the default), ``magnitude-``,
  ``random`` (seeded by ``seed``).

Rules (checked before the model is changed): every weight-updated layer also updates its bias
(it must be among the last ``n_bias_update`` convs, and have a bias: fold BatchNorm first),
indices in range, ratios in (0, 1] or counts in [1, channels]. The classifier (the last
``nn.Linear``, or for a segmentor the last conv) trains whole unless ``train_classifier`` is false.
Everything else is frozen, BatchNorm in eval mode.

Savings are real, not masks: a partially updated or bias-only conv becomes a
:class:`gradfilt.ops.SparseConv2d`, which keeps only the trained channels' inputs (none for
bias only) and computes only their weight-gradient columns; autograd computes no grad_x below
the earliest trained layer. ``patch_size`` puts gradient filters on the fully weight-updated
convs (sparse update + gradient filtering is this one option); partially updated and bias-only
convs keep the exact backward.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor, nn

from ..surgery.freeze import classifier_of, freeze
from ..ops.geometry import check_patch_size
from ..surgery.install import FilterSpec, plan_filters, swap_filters
from ..surgery.paths import replace_module, resolve
from ..ops.sparse import CRITERIA, SparseConv2d, is_depthwise, select_channels
from ..surgery.trace import trace_layers
from .base import Method, register_method
from .vanilla import config_digest

__all__ = ["SparseUpdate"]

Ratio = Union[int, float]  # an int is a channel count, a float a fraction


@register_method("sparse_update")
class SparseUpdate(Method):
    """Biases of the last convs, weights of some of them on a fixed subset of channels (see the module docstring).

    Args:
        n_bias_update: biases of the last N convs train; ``all``: every conv.
        n_weight_update: weights of the last N convs train (exclusive with ``manual_weight_idx``).
        manual_weight_idx: weights of these convs train (0-based, forward execution order).
        weight_update_ratio: fraction (float in (0, 1]) or count (int) of channels per weight-updated
            layer: one value, or a list in the order of the layers (execution order).
        weight_select_criteria: ``magnitude+``, ``magnitude-`` or ``random``.
        train_classifier: the classifier (last ``nn.Linear`` the forward pass runs) trains.
        patch_size: gradient filters of this r on the fully weight-updated convs.
        seed: random source of ``random`` selection.
    """

    def __init__(self, n_bias_update: Union[int, Literal["all"]] = 0, n_weight_update: Optional[int] = None,
                 manual_weight_idx: Optional[list[int]] = None,
                 weight_update_ratio: Union[Ratio, list[Ratio]] = 1.0,
                 weight_select_criteria: str = "magnitude+", train_classifier: bool = True,
                 patch_size: Optional[int] = None, seed: int = 0) -> None:
        if n_bias_update != "all" and (isinstance(n_bias_update, bool) or not isinstance(n_bias_update, int)
                                       or n_bias_update < 0):
            raise ValueError(f"n_bias_update must be an int >= 0 or 'all', got {n_bias_update!r}")
        if n_weight_update is not None and manual_weight_idx is not None:
            raise ValueError("give n_weight_update (the last N convs) or manual_weight_idx (listed convs), not both")
        if n_weight_update is not None and (isinstance(n_weight_update, bool) or not isinstance(n_weight_update, int)
                                            or n_weight_update < 0):
            raise ValueError(f"n_weight_update must be an int >= 0, got {n_weight_update!r}")
        if manual_weight_idx is not None:
            if isinstance(manual_weight_idx, (str, int)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in manual_weight_idx):
                raise ValueError(f"manual_weight_idx must be a list of conv indices, got {manual_weight_idx!r}")
            if len(set(manual_weight_idx)) != len(manual_weight_idx):
                raise ValueError(f"manual_weight_idx lists a conv twice: {manual_weight_idx}")
        ratios = weight_update_ratio if isinstance(weight_update_ratio, (list, tuple)) else [weight_update_ratio]
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)):
                raise ValueError(f"weight_update_ratio entries must be numbers, got {r!r}")
            if isinstance(r, float) and not 0 < r <= 1:
                raise ValueError(f"weight_update_ratio {r} is outside (0, 1]; a fraction of the channels is in "
                                 f"(0, 1], a channel count is an int >= 1")
            if isinstance(r, int) and r < 1:
                raise ValueError(f"weight_update_ratio {r}: a channel count must be >= 1")
        if weight_select_criteria not in CRITERIA:
            raise ValueError(f"unknown weight_select_criteria {weight_select_criteria!r}; valid: {list(CRITERIA)}")
        if patch_size is not None:
            check_patch_size(patch_size)
        self.n_bias_update = n_bias_update
        self.n_weight_update = n_weight_update
        self.manual_weight_idx = None if manual_weight_idx is None else list(manual_weight_idx)
        self.weight_update_ratio = weight_update_ratio if not isinstance(weight_update_ratio, tuple) else list(
            weight_update_ratio)
        self.weight_select_criteria = weight_select_criteria
        self.train_classifier = train_classifier
        self.patch_size = patch_size
        self.seed = seed
        self.plan_: dict[str, dict[str, Any]] = {}  # filled by apply(): per trained conv, what trains

    # --- planning -----------------------------------------------------------------------------
    def _weight_indices(self, n_convs: int) -> list[int]:
        if self.manual_weight_idx is not None:
            bad = [i for i in self.manual_weight_idx if not 0 <= i < n_convs]
            if bad:
                raise ValueError(f"manual_weight_idx {bad} out of range: the forward pass runs {n_convs} convs, "
                                 f"indices 0..{n_convs - 1}")
            return sorted(self.manual_weight_idx)
        n = self.n_weight_update or 0
        if n > n_convs:
            raise ValueError(f"n_weight_update={n} but the forward pass runs only {n_convs} convs")
        return list(range(n_convs - n, n_convs))

    def plan(self, model: nn.Module, example_input: Tensor) -> dict[str, dict[str, Any]]:
        """What trains, per conv, without changing the model: ``{name: {index, channels, of, filter}}``
        (the bias always; ``channels``: the selected channel indices, None = the whole weight, [] = bias
        only; the classifier, which trains whole, is not listed).

        Args:
            model: the network.
            example_input: one input batch, for tracing.
        """
        return self._plan(model, example_input)[0]

    def _plan(self, model: nn.Module, example_input: Tensor):
        """(plan, the filtered convs built, the classifier's name or None), from one traced forward pass."""
        calls = trace_layers(model, example_input)
        classifier = classifier_of(calls, conv_fallback=True) if self.train_classifier else None
        order = [call.name for call in calls if isinstance(call.module, nn.Conv2d)]  # one call per conv
        n = len(order)
        n_bias = n if self.n_bias_update == "all" else self.n_bias_update
        if n_bias > n:
            raise ValueError(f"n_bias_update={n_bias} but the forward pass runs only {n} convs")
        weight_idx = self._weight_indices(n)
        bias_idx = set(range(n - n_bias, n))
        without_bias = [f"{i} ({order[i]})" for i in weight_idx if i not in bias_idx]
        if without_bias:
            raise ValueError(f"conv {', '.join(without_bias)} would update its weight but not its bias: every "
                             f"weight-updated layer also updates its bias; raise n_bias_update to at least "
                             f"{n - min(weight_idx)} (the last {n} convs are indices {n - n_bias}..{n - 1} now)")
        ratios = self.weight_update_ratio if isinstance(self.weight_update_ratio, list) else [
            self.weight_update_ratio] * len(weight_idx)
        if len(ratios) != len(weight_idx):
            raise ValueError(f"weight_update_ratio has {len(ratios)} entries for {len(weight_idx)} weight-updated "
                             f"convs {weight_idx}")
        generator = torch.Generator().manual_seed(self.seed)
        plan: dict[str, dict[str, Any]] = {}
        for i in sorted(bias_idx):
            name = order[i]
            conv = resolve(model, name)
            if conv.bias is None:
                raise ValueError(f"conv {i} ({name}) has no bias to update; fold BatchNorm into the convs first "
                                 f"(classification: model.fuse_bn true)")
            plan[name] = {"index": i, "channels": [], "of": None, "filter": None}
        for i, ratio in zip(weight_idx, ratios):
            name = order[i]
            conv = resolve(model, name)
            if conv.groups > 1 and not is_depthwise(conv):
                raise ValueError(f"conv {i} ({name}) is a grouped conv (groups={conv.groups}); sparse update "
                                 f"selects channels of dense and depthwise convs only")
            total = conv.out_channels if conv.groups > 1 else conv.in_channels
            count = max(1, round(ratio * total)) if isinstance(ratio, float) else ratio
            if count > total:
                raise ValueError(f"weight_update_ratio {ratio} for conv {i} ({name}) asks for {count} channels; it "
                                 f"has {total}")
            full = count == total
            channels = None if full else select_channels(conv.weight, conv.groups, count,
                                                         self.weight_select_criteria, generator).tolist()
            plan[name].update(channels=channels, of=total, filter=self.patch_size if full else None)
        plan.pop(classifier, None)  # it trains whole: no sparse swap for it
        swapped = [name for name, p in plan.items() if p["channels"] is not None or p["filter"] is not None]
        bad = [name for name in swapped if type(resolve(model, name)) is not nn.Conv2d]
        if bad:
            raise TypeError(f"sparse update swaps plain torch.nn.Conv2d layers only; {bad} are "
                            f"{[type(resolve(model, b)).__name__ for b in bad]}")
        # checks the patch sizes against strides and dilations, and builds the filtered convs
        filters = plan_filters(model, [FilterSpec(n, p["filter"], "conv") for n, p in plan.items()
                                       if p["filter"] is not None])
        return plan, filters, classifier

    def apply(self, model: nn.Module, example_input: Tensor) -> None:
        plan, filters, classifier = self._plan(model, example_input)
        freeze(model, [""])
        for name, p in plan.items():
            conv = resolve(model, name)
            conv.bias.requires_grad_(True)
            if p["channels"] is None:
                conv.weight.requires_grad_(True)
            else:
                replace_module(model, name, SparseConv2d.from_conv(conv, p["channels"]))
        swap_filters(model, filters)
        if classifier is not None:
            resolve(model, classifier).requires_grad_(True)
        self.plan_ = plan

    # --- description --------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        """``sparse-b<n_bias>-w<n_weight>[-r<ratio>][-<criterion>][-frozenfc][-R<r>]``, or
        ``sparse-custom-<digest>`` for listed indices or per-layer ratios."""
        if self.manual_weight_idx is not None or isinstance(self.weight_update_ratio, list):
            return f"sparse-custom-{config_digest(self._init_args)}"
        ratio = self.weight_update_ratio
        parts = [f"sparse-b{self.n_bias_update}-w{self.n_weight_update or 0}"]
        if not (isinstance(ratio, float) and ratio == 1.0):
            parts.append(f"r{ratio:g}" if isinstance(ratio, float) else f"c{ratio}")
        if self.weight_select_criteria != "magnitude+":
            parts.append({"magnitude-": "smallest", "random": f"random{self.seed}"}[self.weight_select_criteria])
        if not self.train_classifier:
            parts.append("frozenfc")
        if self.patch_size:
            parts.append(f"R{self.patch_size}")
        return "-".join(parts)

    def fields(self) -> dict[str, Any]:
        return {"method": self.tag, "layers": self.n_weight_update if self.manual_weight_idx is None else "custom",
                "patch_size": self.patch_size or "-"}
