"""The one description of each known block (gradfilt.surgery.blocks), shared by the filter installer and the
patch-grid backward."""

import pytest
import torch
from torch import nn

from gradfilt import install_filters
from gradfilt.models import build_model
from gradfilt.surgery import BLOCKS, block_convs, block_program


@pytest.mark.parametrize("arch, cls", [("resnet18", "BasicBlock"), ("resnet34", "BasicBlock"),
                                       ("mobilenet_v2", "InvertedResidual"), ("mcunet", "MCUNetBlock")])
def test_a_block_program_runs_every_conv_of_the_block_in_order(arch, cls):
    blocks = [m for m in build_model(arch, 10).modules() if type(m).__name__ == cls]
    assert blocks
    for block in blocks:
        assert block_convs(block) == [n for n, m in block.named_modules() if isinstance(m, nn.Conv2d)]


def test_a_program_lists_layers_and_residual_adds_in_forward_order():
    block = build_model("resnet18", 10).layer2[0]  # a BasicBlock with a downsample shortcut
    nodes = block_program(block).nodes
    assert [(n.kind, n.path, n.src) for n in nodes] == [
        ("layer", "conv1", (0,)), ("layer", "bn1", (1,)), ("layer", "relu", (2,)), ("layer", "conv2", (3,)),
        ("layer", "bn2", (4,)), ("layer", "downsample.0", (0,)), ("layer", "downsample.1", (6,)),
        ("add", "", (5, 7)), ("layer", "relu", (8,)),
    ]


def test_an_unknown_block_class_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"no program for Linear; known blocks: \['BasicBlock', 'Bottleneck'"):
        block_program(nn.Linear(2, 2))
    assert {"BasicBlock", "Bottleneck", "InvertedResidual", "MCUNetBlock", "ConvModule"} <= set(BLOCKS)


def test_the_installer_filters_the_convs_of_the_program():
    model = build_model("mobilenet_v2", 10)
    names = install_filters(model, [{"path": "features.17", "patch_size": 2, "type": "inverted_residual"}])
    assert names == [f"features.17.{n}" for n in block_convs(model.features[17])]
    assert len(names) == 3 and model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
