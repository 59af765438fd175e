"""What each known block runs: its layers in forward order, with the residual adds (one description per block).

A block's :class:`Program` lists the layers its forward calls, by dotted path relative to the block,
and the values they read (0 is the block input, node i writes value i + 1): Sequentials and mmcv
``ConvModule``s are expanded into their layers. The filter installer takes a block's convs from it
(:func:`block_convs`), and the patch-grid backward runs it. Register a new block class with
``@register_block("ClassName")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

from ..registry import new_registry, registering
from .paths import join_path

__all__ = ["Node", "Program", "BLOCKS", "register_block", "block_program", "block_convs", "layers_of"]


@dataclass(frozen=True)
class Node:
    """One step of a block program: a layer at ``path`` (relative to the block) or a residual ``add``,
    reading values ``src`` (0 is the block input, node i writes value i + 1)."""

    kind: str  # "layer" or "add"
    path: str
    src: tuple[int, ...]


@dataclass
class Program:
    """A block as the sequence of layers its forward runs."""

    nodes: list[Node] = field(default_factory=list)

    def layer(self, path: str, module: Optional[nn.Module], src: int) -> int:
        """Append ``module`` (a conv, BatchNorm, activation, Identity or None, or a Sequential or mmcv ConvModule
        of them) reading value ``src``; returns the value it writes."""
        if module is None:
            return src
        steps = _steps(path, module)
        if steps is not None:
            for name, child in steps:
                src = self.layer(join_path(path, name), child, src)
            return src
        self.nodes.append(Node("layer", path, (src,)))
        return len(self.nodes)

    def add(self, a: int, b: int) -> int:
        self.nodes.append(Node("add", "", (a, b)))
        return len(self.nodes)


def _steps(path: str, module: nn.Module) -> Optional[list[tuple[str, nn.Module]]]:
    """The (child name, layer) steps of a container layer, in the order it runs them: a Sequential's children, or
    an mmcv ``ConvModule``'s (MMSegmentation's conv-norm-act) conv, norm and activation in its ``order`` (an
    explicit padding layer or a fused conv-BN forward is not described: :mod:`gradfilt.patchgrid` refuses
    those); None for any other module."""
    if isinstance(module, nn.Sequential):
        return list(module.named_children())
    if type(module).__name__ != "ConvModule":
        return None
    steps = {"conv": ("conv", module.conv),
             "norm": (module.norm_name, module.norm) if module.with_norm else None,
             "act": ("activate", module.activate) if module.with_activation else None}
    return [steps[step] for step in module.order if steps[step] is not None]


def layers_of(block: nn.Module, nodes: list[Node]) -> list[Optional[nn.Module]]:
    """The layer each node of a program runs, looked up on ``block`` now (None for an add)."""
    return [None if n.kind == "add" else block.get_submodule(n.path) for n in nodes]


Builder = Callable[[nn.Module], Program]
BLOCKS: dict[str, Builder] = new_registry("blocks", "the layer program of each known block class")


def register_block(class_name: str) -> Callable[[Builder], Builder]:
    """Decorator registering the program of blocks of class ``class_name``.

    Args:
        class_name: the block's class name (torchvision's, mmcv's and gradfilt's blocks match by name).

    The builder takes the block and returns its :class:`Program`: the layers its forward calls,
    by path, in order, with the residual adds. Filter specs of the block's type install on its
    convs (:func:`block_convs`), and :class:`gradfilt.patchgrid.PatchGridBlock` runs it, checking
    the program's output against the block's own when it is installed.
    """
    return registering(BLOCKS, "block", class_name)


@register_block("BasicBlock")
def _basic_block(block: nn.Module) -> Program:
    p = Program()
    v = p.layer("relu", block.relu, p.layer("bn1", block.bn1, p.layer("conv1", block.conv1, 0)))
    v = p.layer("bn2", block.bn2, p.layer("conv2", block.conv2, v))
    p.layer("relu", block.relu, p.add(v, p.layer("downsample", block.downsample, 0)))
    return p


@register_block("Bottleneck")
def _bottleneck(block: nn.Module) -> Program:
    p = Program()
    v = 0
    for i in (1, 2):
        v = p.layer(f"conv{i}", getattr(block, f"conv{i}"), v)
        v = p.layer("relu", block.relu, p.layer(f"bn{i}", getattr(block, f"bn{i}"), v))
    v = p.layer("bn3", block.bn3, p.layer("conv3", block.conv3, v))
    p.layer("relu", block.relu, p.add(v, p.layer("downsample", block.downsample, 0)))
    return p


def _inverted(residual: str) -> Builder:
    def build(block: nn.Module) -> Program:
        p = Program()
        v = p.layer("conv", block.conv, 0)
        if getattr(block, residual):
            p.add(0, v)
        return p

    return build


register_block("InvertedResidual")(_inverted("use_res_connect"))  # torchvision MobileNetV2
register_block("MCUNetBlock")(_inverted("residual"))


@register_block("Conv2dNormActivation")  # torchvision
@register_block("ConvModule")  # mmcv (MMSegmentation's heads and backbones)
def _conv_norm_act(block: nn.Module) -> Program:
    p = Program()
    p.layer("", block, 0)
    return p


def block_program(block: nn.Module) -> Program:
    """The registered program of ``block``.

    Raises:
        KeyError: its class has no registered program (the message lists the known ones).
        AttributeError: its layers are not where the program of its class name looks for them.
    """
    name = type(block).__name__
    if name not in BLOCKS:
        raise KeyError(f"no program for {name}; known blocks: {sorted(BLOCKS)}")
    return BLOCKS[name](block)


def block_convs(block: nn.Module) -> list[str]:
    """The dotted paths (relative to ``block``) of the convs its program runs, in forward order."""
    program = block_program(block)
    return [n.path for n, m in zip(program.nodes, layers_of(block, program.nodes)) if isinstance(m, nn.Conv2d)]
