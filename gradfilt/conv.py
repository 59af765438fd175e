"""``FilteredConv2d``: a drop-in ``nn.Conv2d`` whose backward uses the gradient filter.

The module only stores ``patch_size`` and calls :func:`gradfilt.functional.filtered_conv2d`;
all the math lives there. ``from_conv`` swaps a trained conv for a filtered one that shares
the very same Parameter objects, so an optimizer built before the swap keeps training them.
"""

from __future__ import annotations

from torch import Tensor, nn

from .functional import axis_modes, check_patch_size, filtered_conv2d

__all__ = ["FilteredConv2d"]


class FilteredConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the gradient-filtered backward (forward output is exactly ``F.conv2d``).

    Args:
        *args: as ``nn.Conv2d`` (in_channels, out_channels, kernel_size, stride, padding, ...).
        patch_size: the paper's r, side of the square patches g_y is averaged over (keyword, int >= 1).
        **kwargs: as ``nn.Conv2d``. Only ``padding_mode='zeros'`` is supported.
    """

    def __init__(self, *args, patch_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(
                f"FilteredConv2d supports padding_mode='zeros' only, got {self.padding_mode!r}"
            )
        self.patch_size = check_patch_size(patch_size)
        axis_modes(self.stride, self.dilation, self.patch_size)

    def forward(self, input: Tensor) -> Tensor:
        return filtered_conv2d(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
            patch_size=self.patch_size,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, patch_size={self.patch_size}"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, patch_size: int) -> "FilteredConv2d":
        """A filtered copy of ``conv`` that shares its Parameter objects (weight and bias).

        Args:
            conv: a plain ``nn.Conv2d`` (or a ``FilteredConv2d``, to change its patch size).
            patch_size: the paper's r.

        Returns:
            A new ``FilteredConv2d`` in the same train/eval mode, on the same device and dtype.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv expects a torch.nn.Conv2d, got {type(conv).__name__}")
        if type(conv).forward not in (nn.Conv2d.forward, cls.forward):
            raise TypeError(
                f"{type(conv).__name__} overrides Conv2d.forward, so replacing it by a plain filtered "
                f"convolution would change what it computes; only torch.nn.Conv2d (and FilteredConv2d) "
                f"can be swapped"
            )
        filtered = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device="meta", dtype=conv.weight.dtype, patch_size=patch_size,
        )
        filtered.weight = conv.weight  # the same Parameter objects, not copies
        filtered.bias = conv.bias
        filtered.train(conv.training)
        return filtered

