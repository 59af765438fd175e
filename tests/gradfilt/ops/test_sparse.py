"""Sparse update: the partial-channel conv against the dense conv, the method's rules, real savings."""

import pytest
import torch
from torch import nn

from gradfilt import FilteredConv2d
from gradfilt.cost import estimate_configured, measure
from gradfilt.methods import SparseUpdate, build_method
from gradfilt.models import build_model
from gradfilt.ops.sparse import SparseConv2d, select_channels
from gradfilt.surgery.trace import trace_layers
from helpers.training import fused, sgd_steps

torch.manual_seed(0)


def _state(model):
    return {n: (type(m), tuple(p.requires_grad for p in m.parameters(recurse=False)))
            for n, m in model.named_modules()}


@pytest.mark.parametrize("c_in, c_out, groups, stride, padding, dilation, channels", [
    (6, 5, 1, 1, 1, 1, [0, 3, 4]),
    (6, 5, 1, 2, 1, 1, [5]),
    (6, 4, 1, 1, 2, 2, [1, 2]),
    (6, 6, 6, 1, 1, 1, [0, 2, 5]),   # depthwise: output channels
    (6, 6, 6, 2, 1, 1, [1, 4]),
    (4, 3, 1, 1, 0, 1, []),          # bias only
])
def test_gradients_equal_the_dense_conv_on_the_selected_channels(c_in, c_out, groups, stride, padding, dilation,
                                                                 channels):
    conv = nn.Conv2d(c_in, c_out, 3, stride, padding, dilation, groups).double()
    x = torch.randn(2, c_in, 9, 9, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, conv.weight, conv.bias), g)

    sparse = SparseConv2d.from_conv(conv, channels)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = sparse(x2)
    assert torch.equal(y2, y.detach())
    wanted = [x2, sparse.bias] + ([sparse.weight_update] if channels else [])
    grads = torch.autograd.grad(y2, wanted, g)
    torch.testing.assert_close(grads[0], gx, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[1], gb, rtol=0, atol=1e-12)
    if channels:
        dim = 0 if groups > 1 else 1
        torch.testing.assert_close(grads[2], gw.index_select(dim, torch.tensor(channels)), rtol=0, atol=1e-12)
        assert grads[2].shape[dim] == len(channels)  # only the selected columns are computed


def test_kept_bytes_are_the_selected_inputs_only():
    conv = nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    for channels, expected in (([1, 5, 6], 2 * 3 * 100 * 4), ([], 0)):
        sparse = SparseConv2d.from_conv(conv, channels)
        assert measure(sparse, x)["total"] == expected  # the input is a leaf: no grad_x needed


def test_state_dict_is_the_plain_conv_and_loads_back():
    conv = nn.Conv2d(4, 3, 3)
    sparse = SparseConv2d.from_conv(conv, [0, 2])
    with torch.no_grad():
        sparse.weight_update.add_(1.0)
    state = sparse.state_dict()
    assert set(state) == {"weight", "bias"}
    plain = nn.Conv2d(4, 3, 3)
    plain.load_state_dict(state)
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(plain(x), sparse(x))
    other = SparseConv2d.from_conv(nn.Conv2d(4, 3, 3), [0, 2])
    other.load_state_dict(state)
    assert torch.equal(other(x), sparse(x)) and torch.equal(other.weight_update, sparse.weight_update)


def test_channel_selection_criteria():
    w = torch.zeros(2, 5, 1, 1)
    w[:, :, 0, 0] = torch.tensor([3.0, 1.0, 4.0, 0.5, 2.0])
    assert select_channels(w, 1, 2, "magnitude+").tolist() == [0, 2]
    assert select_channels(w, 1, 2, "magnitude-").tolist() == [1, 3]
    dw = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert select_channels(dw, 4, 1, "magnitude+").tolist() == [3]  # depthwise: per output channel
    a = select_channels(w, 1, 3, "random", torch.Generator().manual_seed(1))
    assert a.tolist() == select_channels(w, 1, 3, "random", torch.Generator().manual_seed(1)).tolist()
    with pytest.raises(ValueError, match=r"unknown channel selection criterion 'norm'; valid"):
        select_channels(w, 1, 2, "norm")


def _mbv2():
    return fused("mobilenet_v2"), torch.zeros(1, 3, 32, 32)


def test_sparse_update_sets_up_mobilenet_v2():
    model, x = _mbv2()
    convs = [c.name for c in trace_layers(model, x) if isinstance(c.module, nn.Conv2d)]
    method = SparseUpdate(n_bias_update=6, manual_weight_idx=[len(convs) - 4, len(convs) - 2, len(convs) - 1],
                          weight_update_ratio=[0.25, 1.0, 16])
    method.apply(model, x)
    a, b, c = convs[-4], convs[-2], convs[-1]
    assert isinstance(model.get_submodule(a), SparseConv2d) and model.get_submodule(a).channels.numel() == round(
        0.25 * model.get_submodule(a).weight.shape[1 if model.get_submodule(a).groups == 1 else 0])
    assert type(model.get_submodule(b)) is nn.Conv2d and model.get_submodule(b).weight.requires_grad
    assert model.get_submodule(c).channels.numel() == 16
    for name in convs[-6:]:
        assert model.get_submodule(name).bias.requires_grad
    for name in (convs[-6], convs[-5], convs[-3]):
        assert isinstance(model.get_submodule(name), SparseConv2d) and not model.get_submodule(name).channels.numel()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.1.weight" in trained and not any(n.startswith("features.0.") for n in trained)


def test_unselected_weights_stay_bit_identical_under_momentum_and_weight_decay():
    model, x = _mbv2()
    method = SparseUpdate(n_bias_update=4, n_weight_update=3, weight_update_ratio=0.5)
    method.apply(model, x)
    before = sgd_steps(model, 3)
    after = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, SparseConv2d) and module.channels.numel():
            dim = 0 if module.groups > 1 else 1
            keep = torch.ones(module.weight.shape[dim], dtype=torch.bool)
            keep[module.channels] = False
            old, new = before[f"{name}.weight"], after[f"{name}.weight"]
            assert torch.equal(old.transpose(0, dim)[keep], new.transpose(0, dim)[keep])  # bit-identical
            assert not torch.equal(old.transpose(0, dim)[~keep], new.transpose(0, dim)[~keep])
    sparse = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, SparseConv2d) and m.channels.numel()}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and n in before and n not in sparse]
    assert len(frozen) > 50 and all(torch.equal(before[n], after[n]) for n in frozen)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_measured_conv_bytes_equal_the_cost_model(arch):
    model = fused(arch)
    x = torch.zeros(1, 3, 32, 32)
    # partial layers only: a fully trained conv's input is often the very tensor its ReLU keeps, which
    # measure() counts once, under "activation"
    SparseUpdate(n_bias_update=8, n_weight_update=4, weight_update_ratio=[0.25, 0.5, 0.75, 0.125]).apply(model, x)
    model.train()
    report = estimate_configured(model, 32, batch_size=2)
    assert {layer.type for layer in report.layers} == {"conv-sparse", "conv-bias", "linear"}
    assert measure(model, torch.randn(2, 3, 32, 32))["conv"] == report.activation_bytes > 0
    bias_only = [layer for layer in report.layers if layer.type == "conv-bias"]
    assert bias_only and all(layer.activation_bytes == 0 for layer in bias_only)


def test_with_gradient_filters_on_the_fully_updated_convs():
    model = fused("resnet18")
    x = torch.zeros(1, 3, 64, 64)
    method = build_method({"type": "sparse_update", "n_bias_update": 4, "n_weight_update": 2,
                           "weight_update_ratio": [0.5, 1.0], "patch_size": 2})
    method.apply(model, x)
    assert type(model.layer4[1].conv2) is FilteredConv2d and model.layer4[1].conv2.patch_size == 2
    assert isinstance(model.layer4[1].conv1, SparseConv2d)
    assert method.tag.startswith("sparse-custom-")
    assert SparseUpdate(n_bias_update=4, n_weight_update=2).tag == "sparse-b4-w2"
    assert SparseUpdate(n_bias_update=8, n_weight_update=2, weight_update_ratio=0.5, patch_size=2).tag == \
        "sparse-b8-w2-r0.5-R2"
    assert SparseUpdate(n_bias_update=8, n_weight_update=2, weight_update_ratio=16, train_classifier=False,
                        weight_select_criteria="random").tag == "sparse-b8-w2-c16-random0-frozenfc"


@pytest.mark.parametrize("kwargs, error, message", [
    ({"n_bias_update": 2, "n_weight_update": 3}, ValueError, r"would update its weight but not its bias.*at least 3"),
    ({"n_bias_update": 2, "manual_weight_idx": [99]}, ValueError, r"manual_weight_idx \[99\] out of range.*0\.\.19"),
    ({"n_bias_update": 30}, ValueError, r"n_bias_update=30 but the forward pass runs only 20 convs"),
    ({"n_bias_update": 2, "n_weight_update": 2, "weight_update_ratio": [0.5]}, ValueError, r"1 entries for 2"),
    ({"n_bias_update": 2, "n_weight_update": 1, "weight_update_ratio": 9999}, ValueError, r"asks for 9999 channels"),
])
def test_rule_errors_leave_the_model_untouched(kwargs, error, message):
    model = fused("resnet18")
    before = _state(model)
    with pytest.raises(error, match=message):
        SparseUpdate(**kwargs).apply(model, torch.zeros(1, 3, 32, 32))
    assert _state(model) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_update_ratio": 1.5}, r"outside \(0, 1\]"),
    ({"weight_update_ratio": 0.0}, r"outside \(0, 1\]"),
    ({"weight_update_ratio": 0}, r"channel count must be >= 1"),
    ({"n_weight_update": 2, "manual_weight_idx": [1]}, r"not both"),
    ({"weight_select_criteria": "l1"}, r"unknown weight_select_criteria 'l1'; valid"),
    ({"n_bias_update": "some"}, r"n_bias_update must be"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseUpdate(**kwargs)


def test_unfused_convs_have_no_bias_to_update():
    model = build_model("resnet18", 10)
    with pytest.raises(ValueError, match=r"has no bias to update; fold BatchNorm"):
        SparseUpdate(n_bias_update=2).apply(model, torch.zeros(1, 3, 32, 32))
