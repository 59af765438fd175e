"""Model builders: MCUNet from the paper's architecture table, the registry's errors."""

import pytest
import torch

from gradfilt import install_filters, last_convs
from gradfilt.models import MCUNET_5FPS, MCUNetBlock, build_model


def test_mcunet_structure():
    model = build_model("mcunet", 1000)
    blocks = [m for m in model if isinstance(m, MCUNetBlock)]
    assert len(blocks) == 14
    assert len(blocks[0].conv) == 2  # the first block has no expansion conv
    assert [b.residual for b in blocks] == [s == 1 and i == o for i, o, _, s, _ in MCUNET_5FPS]
    assert blocks[3].conv[1][0].kernel_size == (7, 7) and blocks[3].conv[1][0].groups == 48
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 1000)
    assert last_convs(model, 2, input_size=(1, 3, 96, 96)) == ["14.conv.1.0", "14.conv.2.0"]


def test_mcunet_block_filter_type():
    model = build_model("mcunet", 10)
    names = install_filters(model, [{"path": "14", "patch_size": 2, "type": "mcunet_block"}])
    assert names == ["14.conv.0.0", "14.conv.1.0", "14.conv.2.0"]
    model(torch.randn(1, 3, 96, 96)).sum().backward()


def test_unknown_arch_and_bad_classes():
    with pytest.raises(ValueError, match=r"unknown arch 'vgg16'; valid archs: \['mcunet', 'mobilenet_v2'"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        build_model("resnet18", 0)
