"""Error-map pruning (Wu, Wang, Shi, Hu, IEEE TCAD 2020) as a training method, composable with gradient filtering.

The layers that train are chosen as :class:`~gradfilt.methods.Vanilla` chooses them (``layers``:
the paper's "#Layers" or ``all``, the from-scratch setting; or an explicit ``freeze`` list). Every
trained dense conv becomes a :class:`gradfilt.ops.PrunedConv2d`: per mini-batch it keeps the top
``alpha`` share of its error map's output channels by s_j = g1 * ||W_j||_1 + g2 * ||delta_j||_1 and
runs its backward on those only. ``patch_size`` filters the kept channels (prune, then filter:
the gradient filter's own backward on the subset). Grouped and depthwise convs keep their exact
(or, with ``patch_size``, filtered) backward.

The paper does not give g1, g2 or alpha; the defaults here (alpha 0.5, g1 0, g2 1: the error map's
magnitude alone) come from a sweep on Fashion-MNIST (``docs/methods.md``), and all three are
configurable.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from ..ops.pruned import PrunedConv2d
from ..surgery.freeze import requires_grad_after
from ..ops.geometry import check_patch_size
from ..surgery.install import FilterSpec, parse_filter_install, plan_filters, swap_filters
from ..surgery.paths import replace_module, resolve
from .base import register_method
from .vanilla import Layers, Vanilla, config_digest

__all__ = ["ErrorMapPruning"]


@register_method("emp")
class ErrorMapPruning(Vanilla):
    """Vanilla layer selection; the trained dense convs prune their error map's channels every step.

    Args:
        layers: the paper's "#Layers" (last N main-path convs + classifier), or ``all``.
        alpha: share of output channels kept per layer and step, in (0, 1].
        g1: weight of ||W_j||_1 in the channel score.
        g2: weight of ||delta_j||_1 (the error map) in the channel score.
        patch_size: gradient filters of this r on the kept channels (and on the trained grouped convs).
        filter_install: per-layer filters instead of ``patch_size``: entries ``{path, patch_size, type}`` as
            for :class:`~gradfilt.methods.GradientFilter`; the trained convs they select filter with their r,
            the other trained convs keep their exact backward (on the kept channels).
        freeze: explicit freeze list instead of ``layers`` (``~path`` un-freezes).
        update_frozen_bn_stats: frozen BatchNorm layers keep updating their running statistics.
    """

    def __init__(self, layers: Layers = None, alpha: float = 0.5, g1: float = 0.0, g2: float = 1.0,
                 patch_size: Optional[int] = None, freeze: Optional[list[str]] = None,
                 update_frozen_bn_stats: bool = False, filter_install: Optional[list[dict]] = None) -> None:
        super().__init__(layers, freeze, update_frozen_bn_stats)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ValueError(f"alpha (the kept share of output channels) must be in (0, 1], got {alpha!r}")
        if not all(isinstance(g, (int, float)) and not isinstance(g, bool) and g >= 0 for g in (g1, g2)) or \
                g1 + g2 == 0:
            raise ValueError(f"g1 and g2 weigh the two score terms: numbers >= 0, not both 0; got {g1!r}, {g2!r}")
        if patch_size is not None:
            check_patch_size(patch_size)
        if filter_install is not None and patch_size is not None:
            raise ValueError("give either patch_size (one r on every trained conv) or a filter_install list, not both")
        self.filter_install = parse_filter_install(filter_install)
        self.alpha, self.g1, self.g2, self.patch_size = float(alpha), float(g1), float(g2), patch_size
        self.pruned_convs: list[str] = []  # filled by apply()

    def apply(self, model: nn.Module, example_input: Tensor) -> None:
        convs, paths = self.plan(model, example_input)
        trained = convs
        if not convs:  # an explicit freeze list: the convs it leaves trainable
            flags = requires_grad_after(model, paths)
            trained = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and flags[f"{n}.weight"]]
        dense = [n for n in trained if type(resolve(model, n)) is nn.Conv2d and resolve(model, n).groups == 1]
        grouped = [n for n in trained if n not in dense]
        if self.filter_install is not None:  # per-layer r, checked against the model before the first change
            sizes = {n: f.patch_size for n, f in plan_filters(model, self.filter_install).items()}
            untrained = sorted(set(sizes) - set(trained))
            if untrained:
                raise ValueError(f"filter_install selects {untrained}, which do not train")
        else:
            sizes = {n: self.patch_size for n in trained} if self.patch_size is not None else {}
        pruned = {n: PrunedConv2d.from_conv(resolve(model, n), self.alpha, self.g1, self.g2, sizes.get(n))
                  for n in dense}  # built (and checked) before the first change
        filters = plan_filters(model, [FilterSpec(n, sizes[n], "conv") for n in grouped if n in sizes])
        for name, module in pruned.items():
            replace_module(model, name, module)
        swap_filters(model, filters)
        self._finish(model, convs, paths)
        self.pruned_convs = dense

    @property
    def tag(self) -> str:
        """``emp<alpha>-<layers>[-R<r>]``, e.g. ``emp0.5-all``, ``emp0.25-2L-R2``."""
        filt = f"-R{self.patch_size}" if self.patch_size else ""
        if self.filter_install is not None:
            sizes = {s.patch_size for s in self.filter_install}
            specs = [(s.path, s.patch_size, s.type) for s in self.filter_install]
            filt = f"-R{sizes.pop() if len(sizes) == 1 else 'x'}-{config_digest(specs)}"
        weights = "" if (self.g1, self.g2) == (0.0, 1.0) else f"-g{self.g1:g},{self.g2:g}"
        return f"emp{self.alpha:g}-{self._depth()}{weights}{filt}"

    def fields(self) -> dict[str, Any]:
        patch = "custom" if self.filter_install is not None else self.patch_size or "-"
        return {**super().fields(), "method": self.tag, "patch_size": patch}
