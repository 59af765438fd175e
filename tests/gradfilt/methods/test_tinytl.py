"""TinyTL: lite residuals beside every block, bias-only convs, frozen weights, and its cost."""

import pytest
import torch
from torch import nn

from gradfilt import classifier_name
from gradfilt.cost import estimate_configured, measure
from gradfilt.methods import TinyTL, build_method
from gradfilt.methods.tinytl import LiteResidual
from gradfilt.models import build_model
from gradfilt.ops.sparse import SparseConv2d
from helpers.training import fused, sgd_steps


@pytest.mark.parametrize("arch, blocks", [("mobilenet_v2", 17), ("mcunet", 14), ("resnet18", 8)])
def test_starts_as_the_network_it_was_and_trains_the_right_parameters(arch, blocks):
    model = fused(arch)
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    classifier = classifier_name(model, x[:1])
    method = build_method({"type": "tinytl"})
    method.apply(model, x[:1])
    assert len(method.blocks) == blocks and method.tag == "tinytl"
    assert torch.equal(model.eval()(x), before)  # the lite residuals' last norm starts at zero scale
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in trained:
        assert name.endswith(".bias") or ".lite_residual." in name or name.startswith(classifier + "."), name
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".lite_residual." not in n]
    assert all(isinstance(c, SparseConv2d) and not c.channels.numel() and c.bias.requires_grad for c in convs)
    assert sum(isinstance(m, LiteResidual) for m in model.modules()) == blocks


def test_frozen_weights_bit_identical_and_the_rest_trains():
    model = fused("mobilenet_v2")
    TinyTL().apply(model, torch.zeros(1, 3, 32, 32))
    before = sgd_steps(model, 2)
    params = dict(model.named_parameters())
    for name, value in model.state_dict().items():
        trains = name in params and params[name].requires_grad
        if trains:
            assert not torch.equal(value, before[name]), name
        elif name.endswith("weight") and ".lite_residual." not in name:
            assert torch.equal(value, before[name]), name


def test_memory_is_the_lite_residuals_inputs_only():
    model = fused("resnet18")
    TinyTL().apply(model, torch.zeros(1, 3, 64, 64))
    model.train()
    report = estimate_configured(model, 64, batch_size=2)
    kinds = {layer.type for layer in report.layers}
    assert kinds == {"conv-bias", "conv", "linear"}
    assert all(layer.activation_bytes == 0 for layer in report.layers if layer.type == "conv-bias")
    lite = [layer for layer in report.layers if layer.type == "conv"]
    assert {layer.name.rsplit(".", 1)[-1] for layer in lite} == {"conv1", "conv2"} and len(lite) == 16
    assert all(".lite_residual." in layer.name for layer in lite)
    assert report.uncounted and all("lite_residual.norm" in n for n in report.uncounted)
    measured = measure(model, torch.randn(2, 3, 64, 64))
    # conv1 keeps the pooled input (a tensor of its own); conv2's input is the ReLU's output, which
    # the ReLU keeps too and measure() counts once, under "activation"
    assert measured["conv"] == sum(layer.activation_bytes for layer in lite if layer.name.endswith("conv1"))


def test_down_sampling_follows_the_map_size():
    model = fused("resnet18")
    method = TinyTL()
    method.apply(model, torch.zeros(1, 3, 32, 32))  # layer4 runs at 1x1: no pooling there
    assert isinstance(model.layer4[1].lite_residual.pool, nn.Identity)
    assert isinstance(model.layer1[0].lite_residual.pool, nn.AvgPool2d)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_errors_leave_the_model_untouched():
    model = build_model("resnet18", 10)  # BN not folded: the convs have no bias
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(ValueError, match=r"convs have none .* fold BatchNorm"):
        TinyTL().apply(model, torch.zeros(1, 3, 32, 32))
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert all(p.requires_grad for p in model.parameters())
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"blocks of types \['InvertedResidual'"):
        TinyTL().apply(plain, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="kernel must be odd"):
        TinyTL(kernel=4)
