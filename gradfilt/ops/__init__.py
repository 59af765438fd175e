"""The autograd ops, each a plain function, an ``autograd.Function`` and a thin ``nn.Conv2d`` subclass.

* :mod:`.filtered`: the gradient-filtered conv (:func:`filtered_conv2d`, :class:`FilteredConv2d`);
* :mod:`.sparse`: the partial-channel conv of sparse update and TinyTL (:class:`SparseConv2d`);
* :mod:`.pruned`: error-map pruning's conv (:class:`PrunedConv2d`);
* :mod:`.geometry` and :mod:`.stages`: the filtered backward's geometry and its stages (patch sums,
  products on the patch grid, spread), public for the patch-grid blocks and the latency benchmark;
* :mod:`.native`: the optional compiled passes (``_kernels.cpp``) with their checks.
"""

from .filtered import FilteredConv2d, filtered_conv2d
from .geometry import Axis, axis_modes, check_patch_size, filter_geometry, patch_counts
from .pruned import PrunedConv2d, channel_scores, kept_channels
from .sparse import CRITERIA, SparseConv2d, select_channels, sparse_conv2d
from .stages import (filtered_backward, grad_patch_sums, input_sums, patch_grid_grads, patch_major_grid,
                     patch_major_layout, patch_mean, patch_sum, spread_grid, tap_grad)

__all__ = ["FilteredConv2d", "filtered_conv2d", "SparseConv2d", "sparse_conv2d", "select_channels", "CRITERIA",
           "PrunedConv2d", "channel_scores", "kept_channels", "Axis", "axis_modes", "check_patch_size",
           "filter_geometry", "patch_counts", "filtered_backward", "grad_patch_sums", "input_sums",
           "patch_grid_grads", "patch_major_grid", "patch_major_layout", "patch_mean", "patch_sum", "spread_grid",
           "tap_grad"]
