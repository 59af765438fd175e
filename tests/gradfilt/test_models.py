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
    with pytest.raises(ValueError, match=r"unknown arch 'vgg16'; valid archs: \['lenet', 'mcunet', 'mobilenet_v2'"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        build_model("resnet18", 0)


TIMM_ARCHS = ["timm/mobilenetv3_small_050", "timm/efficientnet_lite0", "timm/resnet10t"]


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_timm_cnns_take_every_method_and_the_cost_model(arch):
    from gradfilt import FilteredConv2d, GradientFilter, Vanilla, last_convs
    from gradfilt.cost import measure
    from gradfilt.methods import estimate

    x = torch.randn(2, 3, 64, 64)
    model = build_model(arch, 7)
    assert model(x).shape == (2, 7)
    convs = last_convs(model, 2, input_size=(1, 3, 64, 64), main_path=True)
    method = GradientFilter(layers=2, patch_size=2)
    method.apply(model, torch.zeros(1, 3, 64, 64))
    assert method.trained_convs == convs
    assert sorted(n for n, m in model.named_modules() if isinstance(m, FilteredConv2d)) == sorted(convs)
    report = method.cost(model, 64)
    expected = estimate(build_model(arch, 7), 64, 2, 2)  # the cost model on a fresh copy: same set-up, same numbers
    assert (report.backward_flops, report.activation_bytes) == (expected.backward_flops, expected.activation_bytes)
    assert [layer.name for layer in report.layers if layer.type == "conv"] == convs
    assert measure(model.train(), x)["conv"] > 0
    vanilla = build_model(arch, 7)
    Vanilla(layers=2).apply(vanilla, torch.zeros(1, 3, 64, 64))
    assert vanilla.get_submodule(convs[-1]).weight.requires_grad


def test_timm_errors_are_clear(monkeypatch):
    import timm

    from gradfilt.models import timm_pretrained

    with pytest.raises(ValueError, match=r"unknown timm model 'resnet_nope' \(arch 'timm/resnet_nope'\)"):
        build_model("timm/resnet_nope", 10)

    def offline(name, pretrained=False, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"could not fetch timm's pretrained weights for timm/resnet10t "
                                           r"\(OSError: no network\)"):
        timm_pretrained("timm/resnet10t", 10)


@pytest.mark.parametrize("arch, params, convs", [("resnet20", 0.27e6, 19), ("resnet56", 0.85e6, 55)])
def test_cifar_resnets(arch, params, convs):
    from torch import nn

    model = build_model(arch, 10)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.01)  # He et al. 2016, Table 6
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs  # option A: no shortcut convs
    for size in (28, 32):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    assert last_convs(model, 2, input_size=(1, 3, 32, 32)) == [f"{convs // 2 + 2}.conv1", f"{convs // 2 + 2}.conv2"]


def test_option_a_shortcut_subsamples_and_zero_pads():
    from gradfilt.models import CifarBasicBlock

    block = CifarBasicBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2]) and not out[:, :8].any() and not out[:, 24:].any()


def test_lenet():
    model = build_model("lenet", 10)
    assert sum(p.numel() for p in model.parameters()) == 62006  # LeNet-5's 61,706 with 3 input channels
    for size in (28, 32, 40):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
