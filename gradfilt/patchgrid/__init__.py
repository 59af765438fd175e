"""Patch-grid backward for chains of filtered layers: whole blocks whose backward stays on the patch grid.

Between two filtered convs on the same patch grid the gradient is constant on every patch: a
filtered stride-1 "same" conv hands back grad_x = spread(theta~^T g~y), one value per patch. A
frozen (eval-mode or folded) BatchNorm scales it per channel and ReLU / ReLU6 multiply it by a
0/1 mask m, so the patch sums of g_y the next filtered conv needs are

    sum_{p in P} g_y[p] = grid[P] * s * sum_{p in P} m[p]

(s the BatchNorm scale): the per-layer result, without a full-resolution gradient. A block's
backward therefore carries its gradient as ``(dense * scale + spread(grid)) * mask``
(:class:`.carried.CarriedGrad`): ``dense`` is what arrives from outside the chain (the classifier's global
pooling, an identity path), ``grid`` what filtered convs hand back, ``scale`` and ``mask`` the
BatchNorm scales and ReLU masks not yet applied to ``dense``. Along a
residual add both branches get the same gradient; a mask applied to a value with both parts is
kept pending until a conv reads it.

:class:`PatchGridBlock` swaps a known block (ResNet BasicBlock / Bottleneck, MobileNetV2
InvertedResidual, MCUNetBlock, torchvision's Conv2dNormActivation and mmcv's ConvModule, also as the layers of
another block: MMSegmentation's MobileNetV2) for a module with the same children (the
same parameter names) whose forward runs the block's own layers in its own order - the output
is the block's, bit for bit, checked at install time - inside one autograd Function. Forward
keeps x~ (patch sums of the input) for every filtered trained conv, the full input only for
trained convs that are not filtered, and each ReLU mask either as its patch counts (one byte per
patch, when only a filtered conv on the same grid reads it) or bit-packed (1/32 of a float32
map); nothing else. Consecutive blocks hand the gradient of the tensor between them on in this form
(the consumer leaves it in a slot of the producer's output and gives autograd a placeholder: a
broadcast zero scalar, nothing allocated), so a chain of blocks never writes a full-resolution gradient between them.

Gradients equal the per-layer filtered implementation's (same formulas, summed in another order).
The block falls back to its per-layer forward (the graph the block itself builds) in eval mode, without
grad, under autocast, or when one of its BatchNorms would normalize with batch statistics.
:func:`install_patch_grid` converts every qualifying block that holds a filtered conv and says
why the others do not qualify. Limits: BatchNorm affine parameters must be frozen (their weight
gradient needs the full-resolution normalized input), activations ReLU / ReLU6 / Hardtanh only,
integer padding only.
"""

from .block import PatchGridBlock, PatchGridReport, install_patch_grid, plan_patch_grid
from .carried import SAVED_CATEGORY, mul_counts_

__all__ = ["PatchGridBlock", "PatchGridReport", "install_patch_grid", "plan_patch_grid", "mul_counts_",
           "SAVED_CATEGORY"]
