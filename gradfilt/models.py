"""Network builders by name: torchvision's MobileNetV2 / ResNet-18 / ResNet-34, MCUNet, the CIFAR
ResNets (ResNet-20 / 56), LeNet-5, and timm's CNNs.

``timm/<name>`` builds any model of timm (``pip install gradfilt[timm]``) with random weights,
e.g. ``timm/mobilenetv3_small_050``, ``timm/efficientnet_lite0``, ``timm/resnet10t``;
:func:`timm_pretrained` loads timm's published weights through timm's own loader.

MCUNet ("mcunet-5fps", ImageNet) is built from the architecture table in docs/paper.md:
a 3x3 stride-2 stem, 14 inverted-residual blocks (the first without expansion conv), global
average pooling and a linear classifier; ReLU6 and BatchNorm after every conv. ``resnet20`` /
``resnet56`` are He et al.'s CIFAR ResNets (2016, Sec. 4.2): a 3x3 stem with 16 channels, three
stages of n basic blocks (16, 32, 64 channels; n = 3 / 9), stride 2 at the first block of stages
2 and 3 with the parameter-free shortcut (option A: subsample, zero-pad the new channels),
global average pooling, a linear classifier. ``lenet`` is LeNet-5 with ReLU and max pooling
(5x5 convs with 6 and 16 channels, then 120 and 84 hidden units); an adaptive pool makes any
input size give the 5x5 map a 28x28 or 32x32 image gives. Builders here create random weights;
loading pretrained weights belongs to the experiment code.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tv

from .registry import new_registry, registering

__all__ = ["ARCHS", "TIMM_PREFIX", "register_arch", "build_model", "timm_pretrained", "MCUNetBlock", "mcunet",
           "CifarBasicBlock", "cifar_resnet", "lenet"]

TIMM_PREFIX = "timm/"

ARCHS: dict[str, Callable[[int], nn.Module]] = new_registry("archs", "the networks build_model makes by name")


def register_arch(name: str) -> Callable:
    """Decorator registering a builder ``fn(num_classes) -> nn.Module`` under ``name``.

    Args:
        name: the ``--arch`` / ``arch`` value.
    """
    return registering(ARCHS, "arch", name)


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialized network.

    Args:
        arch: a key of ARCHS, or ``timm/<name>`` for a model of timm.
        num_classes: classifier outputs (>= 1).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if isinstance(arch, str) and arch.startswith(TIMM_PREFIX):
        return _timm_model(arch, num_classes, pretrained=False)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {sorted(ARCHS)} or {TIMM_PREFIX}<name> "
                         f"(any model of timm)")
    return ARCHS[arch](num_classes)


def _timm_model(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f"arch {arch!r} needs timm: pip install 'gradfilt[timm]'") from None
    name = arch[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (arch {arch!r}); list them with timm.list_models('{name[:4]}*')")
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)


def timm_pretrained(arch: str, num_classes: int) -> nn.Module:
    """``timm/<name>`` with timm's published weights (timm's loader and cache; needs the network once).

    Args:
        arch: ``timm/<name>``.
        num_classes: classifier outputs; timm re-makes the classifier when they differ from the weights'.

    Raises:
        RuntimeError saying what failed and where timm caches weights, when they cannot be fetched.
    """
    if not arch.startswith(TIMM_PREFIX):
        raise ValueError(f"timm_pretrained takes timm/<name>, got {arch!r}")
    try:
        return _timm_model(arch, num_classes, pretrained=True)
    except ValueError:
        raise
    except Exception as err:  # timm's loaders raise the hub's or the HTTP client's own errors
        raise RuntimeError(
            f"could not fetch timm's pretrained weights for {arch} ({type(err).__name__}: {err}). Without network, "
            f"put them in the Hugging Face cache (HF_HOME) or torch's hub cache, or use random weights"
        ) from None


register_arch("mobilenet_v2")(lambda num_classes: tv.mobilenet_v2(num_classes=num_classes))
register_arch("resnet18")(lambda num_classes: tv.resnet18(num_classes=num_classes))
register_arch("resnet34")(lambda num_classes: tv.resnet34(num_classes=num_classes))


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MCUNetBlock(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise (stride) -> 1x1 project, residual if shapes allow.

    Args:
        c_in: input channels.
        c_out: output channels.
        kernel: depthwise kernel size.
        stride: depthwise stride.
        expanded: width of the depthwise conv; equal to c_in means no expansion conv.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expanded: int) -> None:
        super().__init__()
        expand = [_conv_bn(c_in, expanded, 1)] if expanded != c_in else []
        self.conv = nn.Sequential(
            *expand,
            _conv_bn(expanded, expanded, kernel, stride, groups=expanded),
            _conv_bn(expanded, c_out, 1, act=False),
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


# (in, out, kernel, stride, expanded width) per block, from docs/paper.md
MCUNET_5FPS = [
    (16, 8, 3, 1, 16), (8, 16, 3, 2, 32), (16, 16, 3, 1, 48), (16, 24, 7, 2, 48), (24, 24, 3, 1, 120),
    (24, 40, 3, 2, 120), (40, 40, 7, 1, 160), (40, 48, 5, 1, 160), (48, 48, 3, 1, 144), (48, 48, 3, 1, 192),
    (48, 96, 7, 2, 240), (96, 96, 5, 1, 384), (96, 96, 5, 1, 384), (96, 160, 3, 1, 576),
]


@register_arch("mcunet")
def mcunet(num_classes: int = 1000) -> nn.Sequential:
    """MCUNet "mcunet-5fps": stem, 14 MCUNetBlocks, global pooling, linear classifier."""
    return nn.Sequential(
        _conv_bn(3, 16, 3, 2),
        *(MCUNetBlock(*cfg) for cfg in MCUNET_5FPS),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(MCUNET_5FPS[-1][1], num_classes),
    )


class _ShortcutA(nn.Module):
    """Option-A shortcut: every ``stride``-th pixel, the new channels zero (no parameters)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (N, C, ceil(H/s), ceil(W/s))
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))  # (N, C + extra, ., .)


class CifarBasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus the shortcut, then ReLU (He et al. 2016, CIFAR).

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: stride of the first conv (and of the option-A shortcut when it is not 1).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _ShortcutA(stride, c_out - c_in) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def cifar_resnet(depth: int, num_classes: int = 10) -> nn.Sequential:
    """A CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110).

    Args:
        depth: 6n + 2.
        num_classes: classifier outputs.
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(n):
            layers.append(CifarBasicBlock(c_in, width, 2 if stage and not block else 1))
            c_in = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


register_arch("resnet20")(lambda num_classes: cifar_resnet(20, num_classes))
register_arch("resnet56")(lambda num_classes: cifar_resnet(56, num_classes))


@register_arch("lenet")
def lenet(num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 with ReLU and max pooling, for 3-channel inputs of any size (28x28 and 32x32 as in the paper)."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.AdaptiveMaxPool2d(5),  # (N, 16, 5, 5)
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Linear(120, 84),
        nn.ReLU(inplace=True), nn.Linear(84, num_classes),
    )
