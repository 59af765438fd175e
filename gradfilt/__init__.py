"""gradfilt: gradient filtering for efficient on-device training of CNNs.

Public API: the op (:class:`FilteredConv2d`, :func:`filtered_conv2d`), the partial-channel conv
of sparse update and TinyTL (:class:`SparseConv2d`), the training methods
(:mod:`gradfilt.methods`: :class:`Method`, :func:`register_method`, :func:`build_method`,
:class:`Vanilla`, :class:`GradientFilter`, :class:`SparseUpdate`, :class:`TinyTL`,
:class:`DynamicSparseUpdate`, :class:`ErrorMapPruning` with its conv :class:`PrunedConv2d`,
:class:`EarlyInstanceFilter`), the
config-driven installer
(:func:`install_filters`, :func:`register_filter_type`), freezing by dotted path
(:func:`freeze`) and the paper's "#Layers" selection (:func:`last_convs`). The cost model is
:mod:`gradfilt.cost`; the budgeted configuration search (which layers train, with which patch size,
under a memory / FLOPs / latency budget; needs scipy, the ``[search]`` extra) is :mod:`gradfilt.search`.
"""

from .conv import FilteredConv2d
from .freeze import classifier_name, freeze, last_convs
from .functional import filtered_conv2d, patch_mean, patch_sum
from .install import FILTER_TYPES, FilterSpec, install_filters, register_filter_type
from .methods import METHODS, DynamicSparseUpdate, EarlyInstanceFilter, ErrorMapPruning, GradientFilter, Method, SparseUpdate, TinyTL, Vanilla, build_method, register_method
from .emp import PrunedConv2d
from .sparse import SparseConv2d, sparse_conv2d

__all__ = [
    "FilteredConv2d",
    "filtered_conv2d",
    "SparseConv2d",
    "sparse_conv2d",
    "patch_mean",
    "patch_sum",
    "install_filters",
    "register_filter_type",
    "FilterSpec",
    "FILTER_TYPES",
    "freeze",
    "last_convs",
    "classifier_name",
    "Method",
    "METHODS",
    "register_method",
    "build_method",
    "Vanilla",
    "GradientFilter",
    "SparseUpdate",
    "TinyTL",
    "DynamicSparseUpdate",
    "ErrorMapPruning",
    "EarlyInstanceFilter",
    "PrunedConv2d",
]
