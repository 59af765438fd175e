"""The cost of a plain model trained the paper's way ("#Layers" + patch size), set up by the methods themselves."""

from __future__ import annotations

import copy
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..cost import CostReport, check_batch, estimate_configured, image_size_of, traced_calls
from ..ops.geometry import check_patch_size
from ..surgery.freeze import freeze
from ..surgery.install import install_filters
from .gradient_filter import GradientFilter
from .vanilla import Vanilla

__all__ = ["estimate"]

def estimate(
    model: nn.Module,
    image_size: Union[int, Sequence[int]] = 224,
    trainable: Union[int, str, Sequence[str]] = "all",
    patch_size: Union[None, int, Mapping[str, int]] = None,
    batch_size: int = 1,
    in_channels: int = 3,
) -> CostReport:
    """Analytical backward FLOPs and activation memory of a plain model trained the paper's way.

    A copy of ``model`` is set up (the model itself is not changed) and costed with
    :func:`estimate_configured`: for N or 'all' by :class:`gradfilt.methods.Vanilla` /
    :class:`~gradfilt.methods.GradientFilter`, the same code a training run uses.

    Args:
        model: any model taking a (B, in_channels, H, W) batch.
        image_size: S or (H, W).
        trainable: N (the paper's "#Layers": last N main-path convs + the classifier), 'all', or
            explicit Conv2d / Linear layer names (everything else frozen).
        patch_size: the gradient filter's r for the trainable convs; None for vanilla BP; or a
            mapping conv name -> r (convs not in it use vanilla BP).
        batch_size: images per step (the paper uses 1).
        in_channels: channels of the input image.
    """
    per_layer = dict(patch_size) if isinstance(patch_size, Mapping) else None
    for r in per_layer.values() if per_layer is not None else [patch_size]:
        if r is not None:
            check_patch_size(r)
    check_batch(batch_size)
    h, w = image_size_of(image_size)
    calls = traced_calls(model, h, w, in_channels)
    if per_layer is not None:
        unknown = sorted(set(per_layer) - {c.name for c in calls if isinstance(c.module, nn.Conv2d)})
        if unknown:
            raise ValueError(f"patch sizes given for {unknown}, which are not traced Conv2d layers")
    copy_ = copy.deepcopy(model)
    if isinstance(trainable, str) and trainable != "all" or not isinstance(trainable, (int, str, Sequence)):
        raise ValueError(f"trainable must be an int, 'all' or a list of layer names, got {trainable!r}")
    _set_up(copy_, torch.zeros(1, in_channels, h, w), trainable, patch_size, per_layer, calls)
    report = estimate_configured(copy_, (h, w), batch_size, in_channels)
    report.patch_size = per_layer if per_layer is not None else patch_size
    return report


def _set_up(copy_: nn.Module, example: torch.Tensor, trainable: Union[int, str, Sequence[str]],
            patch_size: Union[None, int, Mapping[str, int]], per_layer: Optional[dict], calls: list) -> None:
    """Set ``copy_`` up as :func:`estimate` describes: the paper's #Layers through Vanilla / GradientFilter, or
    explicit layer names with filters where ``patch_size`` puts them."""
    layer_names = {c.name for c in calls}
    conv_names = {c.name for c in calls if isinstance(c.module, nn.Conv2d)}
    if isinstance(trainable, (int, str)) and not isinstance(trainable, bool):
        if per_layer is None:
            method = Vanilla(layers=trainable) if patch_size is None else GradientFilter(trainable, patch_size)
            method.apply(copy_, example)
        else:
            convs, paths = Vanilla(layers=trainable).plan(copy_, example)
            install_filters(copy_, [{"path": n, "patch_size": r, "type": "conv"}
                                    for n, r in per_layer.items() if n in convs])
            freeze(copy_, paths)
    else:
        if not all(isinstance(n, str) for n in trainable):
            raise ValueError(f"trainable must be an int, 'all' or a list of layer names, got {trainable!r}")
        unknown = sorted(set(trainable) - layer_names)
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; traced Conv2d/Linear layers: {sorted(layer_names)}")
        sizes = per_layer if per_layer is not None else {n: patch_size for n in trainable if n in conv_names}
        install_filters(copy_, [{"path": n, "patch_size": r, "type": "conv"}
                                for n, r in sizes.items() if r is not None and n in trainable])
        freeze(copy_, ["", *(f"~{n}" for n in trainable)])
