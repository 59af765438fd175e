"""gradfilt: gradient filtering for efficient on-device training of CNNs.

Public API: the op (:class:`FilteredConv2d`, :func:`filtered_conv2d`), the config-driven
installer (:func:`install_filters`, :func:`register_filter_type`), freezing by dotted path
(:func:`freeze`) and the paper's "#Layers" selection (:func:`last_convs`, :func:`train_last_layers`).
"""

from .conv import FilteredConv2d
from .freeze import freeze, last_convs
from .functional import filtered_conv2d, patch_mean, patch_sum
from .install import FILTER_TYPES, FilterSpec, install_filters, register_filter_type
from .strategy import train_last_layers

__all__ = [
    "FilteredConv2d",
    "filtered_conv2d",
    "patch_mean",
    "patch_sum",
    "install_filters",
    "register_filter_type",
    "FilterSpec",
    "FILTER_TYPES",
    "freeze",
    "last_convs",
    "train_last_layers",
]
