"""The paper's "#Layers = N" strategy: which layers train, which are filtered, which are frozen."""

import pytest
import torch
from torch import nn

from gradfilt import FilteredConv2d
from gradfilt.models import build_model
from gradfilt.strategy import classifier_name, train_last_layers


def test_last_two_layers_of_resnet18_with_filters():
    model = build_model("resnet18", 10)
    convs = train_last_layers(model, 2, patch_size=4, input_size=(1, 3, 64, 64))
    assert convs == ["layer4.1.conv1", "layer4.1.conv2"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "layer4.1.conv1.weight", "layer4.1.conv2.weight", "fc.weight", "fc.bias"}
    assert [n for n, m in model.named_modules() if isinstance(m, FilteredConv2d)] == convs
    assert model.get_submodule("layer4.1.conv2").patch_size == 4
    bn = model.get_submodule("layer4.1.bn2")
    before = bn.running_mean.clone()
    model.train()(torch.randn(2, 3, 64, 64))
    assert torch.equal(bn.running_mean, before)  # frozen BN stays in eval mode: statistics do not move


def test_all_trains_everything_and_filters_every_conv():
    model = build_model("mcunet", 10)
    convs = train_last_layers(model, "all", patch_size=2, input_size=(1, 3, 64, 64))
    assert all(p.requires_grad for p in model.parameters())
    assert sum(isinstance(m, FilteredConv2d) for m in model.modules()) == len(convs) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules())


def test_classifier_is_the_last_linear_run():
    assert classifier_name(build_model("mobilenet_v2", 10), input_size=(1, 3, 32, 32)) == "classifier.1"
    with pytest.raises(ValueError, match="runs no nn.Linear classifier"):
        classifier_name(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(1, 3, 8, 8))
