"""TinyTL (Cai et al., "TinyTL: Reduce Memory, Not Parameters", NeurIPS 2020) as a training method.

Every weight of the network is frozen; what trains is

* the bias of every conv (fold BatchNorm into the convs first). A bias gradient needs only the
  output gradient, so these convs become bias-only :class:`gradfilt.ops.SparseConv2d`
  layers that keep no input for backward;
* a *lite residual* beside each block (:class:`LiteResidual`), added to the block's output:
  average pooling (``downsample``), a k x k group conv (``groups`` groups, stride = the block's
  stride, ``expand`` x the input channels), norm, ReLU, a 1x1 conv to the block's output
  channels, a norm whose scale starts at zero (so the network starts out exactly as it was), and
  bilinear up-sampling to the block's output size. It keeps only its own small, down-sampled
  input for backward;
* the classifier (the last ``nn.Linear``; for a segmentor, the last conv: its 1x1 classifier).

Blocks: MobileNetV2's ``InvertedResidual`` and MCUNet's ``MCUNetBlock`` (TinyTL's placement),
and for ResNets (which TinyTL's paper does not describe) every ``BasicBlock`` / ``Bottleneck``,
the unit that plays the inverted residual's role: the lite residual reads the block's input and
is added to its output, beside the shortcut.

Normalization: GroupNorm (8 groups, or fewer when the channels do not divide), without the
weight standardization of the original; statistics per sample, so batch 1 trains as well as
batch 64. Resolution: the down-sampling is fixed when the method is applied, from the traced
input size (2, or 1 where a block's map is smaller than 4 x 4), so train at the size you apply
at. Memory: the lite residual's convs keep inputs of (C_in * H/2 * W/2) and
(expand * C_in * H/(2s) * W/(2s)) values per image; the GroupNorms' own saved tensors are
outside the paper's convention (``CostReport.uncounted``) and inside :func:`gradfilt.cost.measure`.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..surgery.freeze import classifier_of, freeze
from ..surgery.paths import replace_module, resolve
from ..ops.sparse import SparseConv2d
from ..surgery.trace import trace_layers
from .base import Method, register_method

__all__ = ["TinyTL", "LiteResidual", "BLOCK_TYPES"]

BLOCK_TYPES = ("InvertedResidual", "MCUNetBlock", "BasicBlock", "Bottleneck")


def _group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class LiteResidual(nn.Module):
    """TinyTL's lite residual: pool -> group conv -> norm -> ReLU -> 1x1 conv -> norm (zero scale) -> upsample.

    Args:
        c_in: the block's input channels.
        c_out: the block's output channels.
        stride: the block's stride.
        kernel: the group conv's kernel size.
        groups: the group conv's groups.
        expand: the group conv's width, as a multiple of ``c_in``.
        downsample: the pooling factor (1: none).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel: int = 5, groups: int = 2,
                 expand: float = 1.0, downsample: int = 2) -> None:
        super().__init__()
        mid = int(round(c_in * expand))
        if c_in % groups or mid % groups:
            raise ValueError(f"lite residual: {c_in} -> {mid} channels do not split into {groups} groups")
        self.pool = nn.AvgPool2d(downsample, downsample, ceil_mode=True) if downsample > 1 else nn.Identity()
        self.conv1 = nn.Conv2d(c_in, mid, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.norm1 = _group_norm(mid)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, c_out, 1, bias=False)
        self.norm2 = _group_norm(c_out)
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        y = self.norm2(self.conv2(self.act(self.norm1(self.conv1(self.pool(x))))))
        return y if tuple(y.shape[-2:]) == tuple(size) else F.interpolate(y, size=size, mode="bilinear",
                                                                         align_corners=False)


class _WithLiteResidual(nn.Module):
    """A block plus its lite residual: ``block(x) + lite(x)``; the block keeps its own parameter names
    under ``block.``."""

    def __init__(self, block: nn.Module, lite: LiteResidual) -> None:
        super().__init__()
        self.block = block
        self.lite_residual = lite

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + self.lite_residual(x, y.shape[-2:])


@register_method("tinytl")
class TinyTL(Method):
    """Frozen weights; conv biases, lite residuals beside every block, and the classifier train.

    Args:
        kernel: kernel size of the lite residual's group conv (TinyTL: 5).
        groups: its groups (TinyTL: 2).
        expand: its width as a multiple of the block's input channels (TinyTL: 1).
        downsample: pooling factor before it (TinyTL: 2; 1 where a block's map is smaller than 4 x 4).
        train_biases: the convs' biases train (TinyTL-B; false: lite residuals and classifier only).
    """

    def __init__(self, kernel: int = 5, groups: int = 2, expand: float = 1.0, downsample: int = 2,
                 train_biases: bool = True) -> None:
        for name, value in (("kernel", kernel), ("groups", groups), ("downsample", downsample)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tinytl {name} must be an int >= 1, got {value!r}")
        if kernel % 2 == 0:
            raise ValueError(f"tinytl kernel must be odd (same padding), got {kernel}")
        if not expand > 0:
            raise ValueError(f"tinytl expand must be > 0, got {expand!r}")
        self.kernel, self.groups, self.expand, self.downsample = kernel, groups, expand, downsample
        self.train_biases = train_biases
        self.blocks: list[str] = []  # filled by apply()

    def plan(self, model: nn.Module, example_input: Tensor) -> dict[str, LiteResidual]:
        """The lite residual of every block (built, not attached) and the checks, without changing the model."""
        return self._plan(model, example_input)[0]

    def _plan(self, model: nn.Module, example_input: Tensor) -> tuple[dict[str, LiteResidual], str]:
        """(lite residuals, the classifier's name), from one traced forward pass."""
        shapes: dict[nn.Module, tuple] = {}
        handles = [m.register_forward_hook(lambda m, a, out: shapes.__setitem__(m, (a[0].shape, out.shape)))
                   for m in model.modules() if type(m).__name__ in BLOCK_TYPES]
        try:
            calls = trace_layers(model, example_input)
        finally:
            for h in handles:
                h.remove()
        classifier = classifier_of(calls, conv_fallback=True, model_name=type(model).__name__)
        blocks = {name: m for name, m in model.named_modules() if m in shapes}
        if not blocks:
            raise ValueError(f"tinytl adds lite residuals beside blocks of types {list(BLOCK_TYPES)}; "
                             f"{type(model).__name__} has none")
        nested = [n for n in blocks if any(n != o and n.startswith(o + ".") for o in blocks)]
        if nested:
            raise ValueError(f"tinytl: blocks inside blocks are ambiguous: {nested}")
        if self.train_biases:
            missing = [n for n, m in model.named_modules()
                       if isinstance(m, nn.Conv2d) and m.bias is None and n != classifier]
            if missing:
                raise ValueError(f"tinytl trains conv biases, and {len(missing)} convs have none (e.g. {missing[0]}); "
                                 f"fold BatchNorm into the convs first (classification: model.fuse_bn true), or "
                                 f"train_biases: false")
            odd = [n for n, m in model.named_modules()
                   if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d and n != classifier]
            if odd:
                raise TypeError(f"tinytl makes plain torch.nn.Conv2d layers bias-only; {odd} are not plain convs")
        lites = {}
        for name, block in blocks.items():
            (_, c_in, h, w), (_, c_out, h_out, _) = shapes[block]
            stride = max(1, round(h / h_out))
            down = self.downsample if min(h, w) >= 2 * self.downsample else 1
            lite = LiteResidual(c_in, c_out, stride, self.kernel, self.groups, self.expand, down)
            param = next(block.parameters())
            lites[name] = lite.to(device=param.device, dtype=param.dtype)
        return lites, classifier

    def apply(self, model: nn.Module, example_input: Tensor) -> None:
        lites, classifier = self._plan(model, example_input)
        freeze(model, [""])
        if self.train_biases:
            convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != classifier]
            for name, conv in convs:
                conv.bias.requires_grad_(True)
                replace_module(model, name, SparseConv2d.from_conv(conv, []))
        for name, lite in lites.items():
            lite.train(model.training)
            replace_module(model, name, _WithLiteResidual(resolve(model, name), lite))
        resolve(model, classifier).requires_grad_(True)
        self.blocks = list(lites)

    @property
    def tag(self) -> str:
        default = (self.kernel, self.groups, self.expand, self.downsample) == (5, 2, 1.0, 2)
        variant = "" if default else f"-k{self.kernel}g{self.groups}e{self.expand:g}d{self.downsample}"
        return f"tinytl{'' if self.train_biases else '-nobias'}{variant}"

    def fields(self) -> dict[str, Any]:
        return {"method": self.tag, "layers": "lite residuals", "patch_size": "-"}
