"""freeze (dotted paths, ~ un-freeze, BN kept in eval) and last_convs (execution order)."""

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet18

from gradfilt import freeze, last_convs


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_and_unfreeze_in_order():
    model = resnet18(num_classes=10)
    freeze(model, ["", "~layer4.1", "~fc", "layer4.1.bn2", "~layer4.1.bn2.bias"])
    assert trainable(model) == {
        "layer4.1.conv1.weight", "layer4.1.bn1.weight", "layer4.1.bn1.bias", "layer4.1.conv2.weight",
        "layer4.1.bn2.bias", "fc.weight", "fc.bias",
    }


def test_frozen_bn_stays_in_eval_and_keeps_statistics():
    model = resnet18(num_classes=10)
    freeze(model, ["", "~layer4"])
    model.train()
    stats = model.bn1.running_mean.clone()
    live = model.layer4[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert not model.bn1.training and torch.equal(model.bn1.running_mean, stats)
    assert model.layer4[0].bn1.training and not torch.equal(model.layer4[0].bn1.running_mean, live)
    # un-freezing gives the BN back to model.train()
    freeze(model, ["~"])
    model.train()
    model(torch.randn(2, 3, 64, 64))
    assert model.bn1.training and not torch.equal(model.bn1.running_mean, stats)


def test_freeze_errors_before_any_change():
    model = resnet18(num_classes=10)
    with pytest.raises(KeyError, match="'layer4.1' has children .*conv1.* and parameters"):
        freeze(model, ["layer1", "layer4.1.conv9"])
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    with pytest.raises(TypeError, match="must be strings"):
        freeze(model, [3])


def test_last_convs_follows_execution_not_registration_order():
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(8, 2, 1)  # registered first, runs last
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1))

        def forward(self, x):
            return self.head(self.body(x))

    model = HeadFirst().train()
    stats = model.body[1].running_mean.clone()
    assert last_convs(model, 2, input_size=(1, 3, 8, 8)) == ["body.2", "head"]
    assert last_convs(model, 0, input_size=(1, 3, 8, 8)) == []
    assert model.training and model.body[1].training  # flags restored
    assert torch.equal(model.body[1].running_mean, stats)  # no statistics moved while tracing


def test_last_convs_on_torchvision_models():
    assert last_convs(resnet18(), 3, input_size=(1, 3, 64, 64)) == [
        "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2"
    ]
    assert last_convs(mobilenet_v2(), 2, example_input=torch.zeros(1, 3, 64, 64)) == [
        "features.17.conv.2", "features.18.0"
    ]


def test_last_convs_errors():
    model = resnet18()
    with pytest.raises(ValueError, match="asked for the last 30 conv layers but the forward pass runs only 20"):
        last_convs(model, 30, input_size=(1, 3, 32, 32))
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        last_convs(model, -1)


def test_last_convs_main_path_skips_shortcut_convs():
    model = resnet18()
    assert last_convs(model, 4, input_size=(1, 3, 64, 64), main_path=True) == [
        "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"
    ]
    with pytest.raises(ValueError, match="last 18 main-path conv layers but the forward pass runs only 17"):
        last_convs(model, 18, input_size=(1, 3, 64, 64), main_path=True)


def test_frozen_bn_can_keep_updating_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    freeze(model, [""], update_frozen_bn_stats=True)
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    before = model[1].running_mean.clone()
    model(torch.randn(2, 3, 6, 6))
    assert not torch.equal(model[1].running_mean, before) and model[1].training


def test_requires_grad_after_is_what_freeze_leaves():
    from gradfilt.surgery.freeze import requires_grad_after
    from gradfilt.models import build_model

    model = build_model("resnet18", 10)
    paths = ["", "~layer4", "layer4.0", "~layer4.0.conv2.weight", "~fc"]
    predicted = requires_grad_after(model, paths)
    assert all(p.requires_grad for p in model.parameters())  # nothing changed yet
    freeze(model, paths)
    assert predicted == {n: p.requires_grad for n, p in model.named_parameters()}
    assert predicted["layer4.0.conv2.weight"] and not predicted["layer4.0.conv1.weight"]
    assert predicted["layer4.1.conv1.weight"] and not predicted["layer3.1.conv2.weight"]
