"""FilteredConv2d as a module: construction, parameter sharing, errors, serialization."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradfilt import FilteredConv2d, filtered_conv2d


def test_forward_is_exactly_conv2d():
    conv = FilteredConv2d(4, 6, 3, stride=2, padding=1, patch_size=2)
    x = torch.randn(2, 4, 11, 9)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, 2, 1))


def test_backward_is_the_functional_form():
    torch.manual_seed(0)
    conv = FilteredConv2d(4, 6, 3, padding=1, groups=2, patch_size=4)
    x = torch.randn(2, 4, 10, 10, requires_grad=True)
    conv(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    w2 = conv.weight.detach().clone().requires_grad_(True)
    filtered_conv2d(x2, w2, conv.bias.detach(), 1, 1, 1, 2, patch_size=4).square().sum().backward()
    assert torch.equal(conv.weight.grad, w2.grad)
    assert torch.equal(x.grad, x2.grad)


def test_from_conv_shares_parameters_and_state():
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=1, groups=4, bias=True).double()
    conv.eval()
    filtered = FilteredConv2d.from_conv(conv, patch_size=3)
    assert filtered.weight is conv.weight and filtered.bias is conv.bias
    assert (filtered.stride, filtered.padding, filtered.groups) == (conv.stride, conv.padding, conv.groups)
    assert filtered.patch_size == 3 and not filtered.training
    assert "patch_size=3" in repr(filtered)
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    assert torch.equal(filtered(x), conv(x))
    # a filtered layer can be re-filtered with another patch size, still sharing parameters
    again = FilteredConv2d.from_conv(filtered, patch_size=2)
    assert again.weight is conv.weight and again.patch_size == 2


def test_optimizer_built_before_swap_trains_filtered_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[2].weight.detach().clone()
    model[2] = FilteredConv2d.from_conv(model[2], patch_size=2)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    opt.step()
    assert not torch.equal(model[2].weight, before)


def test_state_dict_is_interchangeable_with_conv2d():
    filtered = FilteredConv2d(3, 5, 3, padding=1, patch_size=2)
    plain = nn.Conv2d(3, 5, 3, padding=1)
    plain.load_state_dict(filtered.state_dict())
    assert torch.equal(plain.weight, filtered.weight)
    clone = copy.deepcopy(filtered)
    assert clone.patch_size == 2 and torch.equal(clone.weight, filtered.weight)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(patch_size=0), ValueError, "patch_size must be an int >= 1"),
        (dict(patch_size=3, padding=4, dilation=4), ValueError, "dilation 4 .* not divisible by patch_size 3"),
        (dict(patch_size=2, padding_mode="reflect", padding=1), ValueError, "padding_mode='zeros' only"),
    ],
)
def test_constructor_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        FilteredConv2d(4, 4, 3, **kwargs)


def test_patch_size_is_required_keyword():
    with pytest.raises(TypeError):
        FilteredConv2d(4, 4, 3)


def test_from_conv_rejects_non_conv_and_custom_forward():
    with pytest.raises(TypeError, match="expects a torch.nn.Conv2d, got Linear"):
        FilteredConv2d.from_conv(nn.Linear(2, 2), 2)

    class StdConv(nn.Conv2d):
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / self.weight.std()
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    with pytest.raises(TypeError, match="StdConv overrides Conv2d.forward"):
        FilteredConv2d.from_conv(StdConv(2, 2, 3), 2)
