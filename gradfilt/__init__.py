"""gradfilt: gradient filtering for efficient on-device training of CNNs.

The library in layers, each importing only those below it (``docs/architecture.md``):

* :mod:`gradfilt.ops` -- the autograd ops: the filtered conv (:class:`FilteredConv2d`,
  :func:`filtered_conv2d`), the partial-channel conv of sparse update and TinyTL (:class:`SparseConv2d`),
  error-map pruning's conv (:class:`PrunedConv2d`), the filtered backward's stages;
* :mod:`gradfilt.surgery` -- model edits by dotted path: freezing (:func:`freeze`), the paper's "#Layers"
  (:func:`last_convs`), BatchNorm folding (:func:`fuse_bn`), the filter installer (:func:`install_filters`),
  the layer program of each known block;
* :mod:`gradfilt.patchgrid` -- whole blocks whose backward stays on the patch grid;
* :mod:`gradfilt.cost` -- backward FLOPs and memory in the paper's convention, and measured bytes;
* :mod:`gradfilt.methods` -- the training methods (:class:`Method`, :func:`build_method`, ...);
* :mod:`gradfilt.search` -- the budgeted configuration search (needs scipy, the ``[search]`` extra).

:mod:`gradfilt.models` builds the networks, :mod:`gradfilt.registry` lists every registry, and
``python -m gradfilt cost`` is the command line.
"""

from .methods import (METHODS, DynamicSparseUpdate, EarlyInstanceFilter, ErrorMapPruning, GradientFilter, Method,
                      SparseUpdate, TinyTL, Vanilla, build_method, estimate, register_method)
from .ops import FilteredConv2d, PrunedConv2d, SparseConv2d, filtered_conv2d, patch_mean, patch_sum, sparse_conv2d
from .surgery import (FILTER_TYPES, FilterSpec, classifier_name, freeze, fuse_bn, install_filters, last_convs,
                      register_filter_type)

__all__ = [
    "FilteredConv2d",
    "filtered_conv2d",
    "SparseConv2d",
    "sparse_conv2d",
    "PrunedConv2d",
    "patch_mean",
    "patch_sum",
    "install_filters",
    "register_filter_type",
    "FilterSpec",
    "FILTER_TYPES",
    "freeze",
    "fuse_bn",
    "last_convs",
    "classifier_name",
    "Method",
    "METHODS",
    "register_method",
    "build_method",
    "estimate",
    "Vanilla",
    "GradientFilter",
    "SparseUpdate",
    "TinyTL",
    "DynamicSparseUpdate",
    "ErrorMapPruning",
    "EarlyInstanceFilter",
]
