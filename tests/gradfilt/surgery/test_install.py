"""install_filters: block types, parameter identity, training, and all-or-nothing errors."""

import pytest
import torch
from mmcv.cnn import ConvModule
from torch import nn
from torchvision.models import mobilenet_v2, resnet18

from gradfilt import FILTER_TYPES, FilteredConv2d, freeze, install_filters, register_filter_type


def filtered_names(model):
    return {n: m.patch_size for n, m in model.named_modules() if isinstance(m, FilteredConv2d)}


def test_block_types_on_resnet18():
    model = resnet18(num_classes=10)
    weight = model.layer4[1].conv2.weight
    names = install_filters(
        model,
        [
            {"path": "layer4.1", "patch_size": 2, "type": "basic_block"},
            {"path": "layer4.0.downsample", "patch_size": 4, "type": "cbr"},
            {"path": "layer3", "patch_size": 7, "type": "resnet_layer"},
            {"path": "conv1", "patch_size": 2, "type": "conv"},
        ],
    )
    assert names == [
        "layer4.1.conv1", "layer4.1.conv2", "layer4.0.downsample.0",
        "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv1", "layer3.1.conv2",
        "conv1",
    ]
    assert filtered_names(model) == {n: (2 if n.startswith(("layer4.1", "conv1")) else 4 if "layer4" in n else 7)
                                     for n in names}
    assert model.layer4[1].conv2.weight is weight
    assert type(model.layer4[0].conv1) is nn.Conv2d


def test_inverted_residual_and_all_on_mobilenet_v2():
    model = mobilenet_v2(num_classes=10)
    names = install_filters(model, [{"path": "features.17", "patch_size": 2, "type": "inverted_residual"},
                                    {"path": "features.18", "patch_size": 2}])
    assert names == ["features.17.conv.0.0", "features.17.conv.1.0", "features.17.conv.2", "features.18.0"]
    out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 10)


def test_cbr_accepts_mmcv_conv_module():
    model = nn.Sequential(ConvModule(3, 8, 3, padding=1, norm_cfg=dict(type="BN")))
    assert install_filters(model, [{"path": "0", "patch_size": 2, "type": "cbr"}]) == ["0.conv"]
    assert isinstance(model[0].conv, FilteredConv2d)


def test_filtered_model_trains_with_optimizer_built_before():
    torch.manual_seed(0)
    model = resnet18(num_classes=4)
    freeze(model, ["", "~layer4.1", "~fc"])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    install_filters(model, [{"path": "layer4.1", "patch_size": 2, "type": "basic_block"}])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert not torch.equal(p, before[name]), name
        else:
            assert p.grad is None and torch.equal(p, before[name]), name
    assert set(filtered_names(model)) == {"layer4.1.conv1", "layer4.1.conv2"}


def test_register_custom_type():
    @register_filter_type("test_pair_of_convs")
    def pair(module):
        if not (isinstance(module, nn.Sequential) and len(module) == 2):
            raise TypeError("expected a Sequential of two convs")
        return ["1"]

    try:
        model = nn.Sequential(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)))
        assert install_filters(model, [{"path": "0", "patch_size": 2, "type": "test_pair_of_convs"}]) == ["0.1"]
        with pytest.raises(ValueError, match="already registered"):
            register_filter_type("test_pair_of_convs")(pair)
    finally:
        del FILTER_TYPES["test_pair_of_convs"]


BAD_SPECS = {
    "unknown path": ([{"path": "layer5", "patch_size": 2}], KeyError, "has no child 'layer5'; its children are: conv1, bn1"),
    "unknown nested path": ([{"path": "layer4.7", "patch_size": 2}], KeyError, "'layer4' has no child '7'; its children are: 0, 1"),
    "unknown type": ([{"path": "layer4", "patch_size": 2, "type": "blok"}], ValueError, r"unknown filter type 'blok'; valid types: \['all', 'basic_block'"),
    "type mismatch": ([{"path": "layer4.1", "patch_size": 2, "type": "bottleneck"}], TypeError, "expected a ResNet Bottleneck, found BasicBlock"),
    "conv type on block": ([{"path": "layer4", "patch_size": 2, "type": "conv"}], TypeError, "expected a Conv2d, found Sequential"),
    "no conv under path": ([{"path": "fc", "patch_size": 2}], TypeError, "at least one Conv2d, found Linear"),
    "patch size 0": ([{"path": "layer4", "patch_size": 0}], ValueError, "patch_size must be an int >= 1"),
    "unknown key": ([{"path": "layer4", "patch_size": 2, "r": 2}], ValueError, r"unknown key\(s\) \['r'\].*valid keys: \['path', 'patch_size', 'type'\]"),
    "missing patch size": ([{"path": "layer4"}], ValueError, r"missing \['patch_size'\]"),
    "overlap": ([{"path": "layer4", "patch_size": 2}, {"path": "layer4.1.conv1", "patch_size": 4}], ValueError,
                "spec #2 .* selects 'layer4.1.conv1', already selected by filter spec #1"),
}


@pytest.mark.parametrize("specs,error,message", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_specs_leave_model_untouched(specs, error, message):
    model = resnet18(num_classes=10)
    good = {"path": "layer3", "patch_size": 2}  # valid, and listed first: must not be installed either
    with pytest.raises(error, match=message):
        install_filters(model, [good, *specs])
    assert filtered_names(model) == {}


def test_dilation_not_divisible_is_reported_with_layer_name():
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3, padding=4, dilation=4))
    with pytest.raises(ValueError, match=r"filter spec #0 \('', type 'all'\), layer '1': dilation 4"):
        install_filters(model, [{"path": "", "patch_size": 3}])
    assert filtered_names(model) == {}
