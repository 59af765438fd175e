"""Vanilla backpropagation on a chosen set of layers: the baseline every other method is compared with.

Which layers train is said in one of two ways:

* ``layers: N`` -- the paper's "#Layers": the last N main-path convs in forward execution order
  (:func:`gradfilt.last_convs` with ``main_path=True``) plus the classifier (the last
  ``nn.Linear`` the forward pass runs) train; everything else is frozen. ``layers: all``
  trains every parameter (nothing is frozen).
* ``freeze: [...]`` -- an explicit list in gradfilt's dotted-path syntax (``""`` is the whole
  model, ``~path`` un-freezes), applied in order.

Frozen BatchNorm layers stay in eval mode (their running statistics do not move) unless
``update_frozen_bn_stats`` (the segmentation "calibration" stage). Keeping every BatchNorm in
eval mode, trainable or not, is part of a training recipe, not of a method
(:func:`gradfilt.surgery.keep_bn_eval`, the applications' ``bn_eval`` option).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Optional, Union

from torch import Tensor, nn

from ..surgery.freeze import check_freeze, classifier_name, freeze, last_convs
from .base import Method, register_method

__all__ = ["Vanilla"]

Layers = Union[int, Literal["all"], None]


def _check_layers(layers: Layers) -> Layers:
    if layers is None or layers == "all":
        return layers
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(f"layers must be an int >= 0 (the paper's #Layers), 'all' or null, got {layers!r}")
    return layers


def config_digest(*parts: Any) -> str:
    """Six hex digits identifying an explicit configuration, so two different ones never share a run folder."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:6]


@register_method("vanilla")
class Vanilla(Method):
    """Exact backpropagation through the trained layers.

    Args:
        layers: the paper's "#Layers" (last N main-path convs + classifier), or ``all``; default
            ``all`` unless ``freeze`` is given.
        freeze: explicit freeze list instead of ``layers`` (``~path`` un-freezes).
        update_frozen_bn_stats: frozen BatchNorm layers keep updating their running statistics.
    """

    def __init__(self, layers: Layers = None, freeze: Optional[list[str]] = None,
                 update_frozen_bn_stats: bool = False) -> None:
        self.layers = _check_layers(layers)
        if freeze is not None:
            if isinstance(freeze, str) or not all(isinstance(p, str) for p in freeze):
                raise TypeError(f"freeze must be a list of dotted path strings, got {freeze!r}")
            if self.layers is not None:
                raise ValueError("give either layers (the paper's #Layers) or an explicit freeze list, not both")
        elif self.layers is None:
            self.layers = "all"
        self.freeze = None if freeze is None else list(freeze)
        self.update_frozen_bn_stats = update_frozen_bn_stats
        self.trained_convs: list[str] = []  # filled by apply(): the convs whose weights train

    # --- selection ----------------------------------------------------------------------------
    def _selection(self, model: nn.Module, example_input: Tensor) -> tuple[list[str], list[str]]:
        """(convs the layer count selects, the freeze list to apply); nothing is changed."""
        if self.freeze is not None:
            return [], self.freeze
        if self.layers == "all":
            return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)], []
        convs = last_convs(model, self.layers, example_input, main_path=True)
        return convs, ["", *(f"~{name}" for name in convs), f"~{classifier_name(model, example_input)}"]

    def plan(self, model: nn.Module, example_input: Tensor) -> tuple[list[str], list[str]]:
        """Check the selection on ``model`` without changing it: (selected convs, freeze list).

        Args:
            model: the network.
            example_input: one input batch, for tracing.
        """
        try:
            convs, paths = self._selection(model, example_input)
        except ValueError as err:
            raise ValueError(f"{self.name} layers={self.layers}: {err}") from None
        check_freeze(model, paths)
        return convs, paths

    def _finish(self, model: nn.Module, convs: list[str], paths: list[str]) -> None:
        freeze(model, paths, update_frozen_bn_stats=self.update_frozen_bn_stats)
        self.trained_convs = convs or [name for name, m in model.named_modules()
                                       if isinstance(m, nn.Conv2d) and m.weight.requires_grad]

    def apply(self, model: nn.Module, example_input: Tensor) -> None:
        convs, paths = self.plan(model, example_input)
        self._finish(model, convs, paths)

    # --- description --------------------------------------------------------------------------
    def _depth(self) -> str:
        if self.freeze is not None:
            return f"custom-{config_digest(self.freeze)}"
        return "all" if self.layers == "all" else f"{self.layers}L"

    @property
    def tag(self) -> str:
        return f"vanilla-{self._depth()}"

    def fields(self) -> dict[str, Any]:
        return {"method": self.tag, "layers": "custom" if self.freeze is not None else self.layers, "patch_size": "-"}
