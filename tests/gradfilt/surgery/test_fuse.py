"""BatchNorm folding: exact against the unfused model, and all-or-nothing."""

import copy

import pytest
import torch
from torch import nn

from gradfilt.surgery.fuse import conv_bn_pairs, fuse_bn
from gradfilt.models import build_model


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.mark.parametrize("arch, pairs", [("resnet18", 20), ("mobilenet_v2", 52), ("mcunet", 42)])
def test_fused_model_matches_eval_mode_original(arch, pairs):
    torch.manual_seed(0)
    model = build_model(arch, 10)
    _randomize_bn(model)
    reference = copy.deepcopy(model).eval()
    folded = fuse_bn(model)
    assert len(folded) == pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x), atol=1e-5, rtol=1e-4)
    for m in model.modules():
        m.training = not isinstance(m, nn.Dropout)  # train mode, MobileNetV2's dropout aside: no BN left to differ
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-4)


def test_pairs_follow_execution_and_keep_requires_grad():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                          nn.BatchNorm2d(4))
    model[0].weight.requires_grad_(False)
    assert conv_bn_pairs(model, torch.zeros(1, 3, 8, 8)) == [("0", "1"), ("3", "4")]
    fuse_bn(model, torch.randn(2, 3, 8, 8))
    assert isinstance(model[1], nn.Identity) and isinstance(model[4], nn.Identity)
    assert not model[0].weight.requires_grad and not model[0].bias.requires_grad
    assert model[3].weight.requires_grad and model[3].bias.requires_grad


class _ReadsConvTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the conv output is also read outside its BN


def test_unsafe_fold_is_rolled_back():
    model = _ReadsConvTwice()
    _randomize_bn(model)
    weight, bn = model.conv.weight, model.bn
    with pytest.raises(ValueError, match="changed the model's output .* left unchanged"):
        fuse_bn(model, torch.randn(2, 3, 8, 8))
    assert model.conv.weight is weight and model.bn is bn


def test_timm_batchnorm_with_its_activation_folds_and_keeps_the_activation():
    pytest.importorskip("timm")
    model = build_model("timm/efficientnet_lite0", 10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    pairs = fuse_bn(model, x)
    assert pairs and not [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert isinstance(model.get_submodule(pairs[0][1]), torch.nn.ReLU6)  # the stem's BatchNormAct2d: its ReLU6
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-4 * float(before.abs().max()))


def test_a_batchnorm_that_does_more_than_normalize_is_refused_by_name():
    class ScaledBN(torch.nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), ScaledBN(4))
    weight = model[0].weight
    with pytest.raises(ValueError, match="'1' is a ScaledBN, a BatchNorm2d whose forward does more than normalize"):
        fuse_bn(model, torch.randn(2, 3, 8, 8))
    assert model[0].weight is weight and isinstance(model[1], ScaledBN)
