"""Gradient filtering (Yang, Li, Marculescu, CVPR 2023) as a training method.

The trained layers are chosen as for :class:`~gradfilt.methods.Vanilla` (``layers: N``,
``layers: all`` or an explicit ``freeze`` list); the filters go either on the convs the layer
count selects (``patch_size: r``, the paper's "#Layers + patch size") or where an explicit
``filter_install`` list puts them (dotted paths, per-entry patch size and block type, see
:func:`gradfilt.install_filters`). Filtered layers are :class:`gradfilt.FilteredConv2d` sharing
the original Parameter objects. All checks (paths, types, patch sizes against dilations) run
before the first swap. With ``patch_grid`` (the default) every block that holds filtered convs
and qualifies runs its backward on the patch grid (:mod:`gradfilt.patchgrid`: the same gradients,
far fewer saved bytes); :attr:`GradientFilter.patch_grid_report` says which blocks do and why the
other filtered convs stay per layer.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from ..patchgrid import PatchGridBlock, PatchGridReport, install_patch_grid
from ..ops.geometry import check_patch_size
from ..surgery.install import FilterSpec, parse_filter_install, plan_filters, swap_filters
from .base import register_method
from .vanilla import Layers, Vanilla, config_digest

__all__ = ["GradientFilter"]


@register_method("gradient_filter")
class GradientFilter(Vanilla):
    """Vanilla layer selection plus gradient filters on the trained convs.

    Args:
        layers: the paper's "#Layers" (last N main-path convs + classifier), or ``all``.
        patch_size: r of the filters on the convs ``layers`` selects (``all``: every conv).
        filter_install: explicit filters instead of ``patch_size``: entries ``{path, patch_size, type}``.
        freeze: explicit freeze list instead of ``layers`` (``~path`` un-freezes).
        update_frozen_bn_stats: frozen BatchNorm layers keep updating their running statistics.
        patch_grid: run the backward of qualifying blocks on the patch grid (same gradients as the per-layer
            filters, fewer saved bytes); False keeps every filtered conv's own per-layer backward.
    """

    def __init__(self, layers: Layers = None, patch_size: Optional[int] = None,
                 filter_install: Optional[list[dict]] = None, freeze: Optional[list[str]] = None,
                 update_frozen_bn_stats: bool = False, patch_grid: bool = True) -> None:
        super().__init__(layers, freeze, update_frozen_bn_stats)
        if (patch_size is None) == (filter_install is None):
            raise ValueError("gradient_filter needs either patch_size (filters on the convs `layers` selects) or an "
                             "explicit filter_install list, exactly one; for plain BP use the method 'vanilla'")
        if patch_size is not None:
            if self.freeze is not None:
                raise ValueError("patch_size filters the convs `layers` selects; with an explicit freeze list give "
                                 "an explicit filter_install list too")
            check_patch_size(patch_size)
        self.patch_size = patch_size
        self.filter_install = parse_filter_install(filter_install)
        if not isinstance(patch_grid, bool):
            raise ValueError(f"patch_grid must be true or false, got {patch_grid!r}")
        self.patch_grid = patch_grid
        self.filtered_convs: list[str] = []  # filled by apply()
        self.patch_grid_report: Optional[PatchGridReport] = None  # filled by apply() with patch_grid
        self._blocks: list[PatchGridBlock] = []

    def apply(self, model: nn.Module, example_input: Tensor) -> None:
        convs, paths = self.plan(model, example_input)
        specs = self.filter_install or [FilterSpec(name, self.patch_size, "conv") for name in convs]
        swaps = plan_filters(model, specs)
        swap_filters(model, swaps)
        self._finish(model, convs, paths)
        self.filtered_convs = list(swaps)
        if self.patch_grid:
            self.patch_grid_report = install_patch_grid(model, example_input)
            self._blocks = [m for m in model.modules() if isinstance(m, PatchGridBlock)]

    def metrics(self) -> dict[str, float]:
        """``PerLayerBlocks``: how many patch-grid blocks ran the last training step per layer (autocast, a
        BatchNorm normalizing with batch statistics; each says why once, as a warning)."""
        if not self._blocks:
            return {}
        return {"PerLayerBlocks": float(sum(b.per_layer_now is not None for b in self._blocks))}

    def summary(self) -> str:
        """Which blocks run their backward on the patch grid and why other filtered convs do not."""
        return "" if self.patch_grid_report is None else "\n".join(self.patch_grid_report.lines())

    @property
    def tag(self) -> str:
        suffix = "" if self.patch_grid else "-per-layer"
        if self.filter_install is None:
            return f"R{self.patch_size}-{self._depth()}{suffix}"
        sizes = {s.patch_size for s in self.filter_install}
        prefix = f"R{sizes.pop()}" if len(sizes) == 1 else "filter"
        specs = [(s.path, s.patch_size, s.type) for s in self.filter_install]
        return f"{prefix}-custom-{config_digest(specs, self.freeze, self.layers)}{suffix}"

    def fields(self) -> dict[str, Any]:
        explicit = self.freeze is not None
        return {"method": self.tag, "layers": "custom" if explicit else self.layers,
                "patch_size": self.patch_size if self.filter_install is None else "custom"}
