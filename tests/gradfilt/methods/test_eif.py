"""Early instance filtering: the filter network, its self-supervised training, the threshold, composition."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradfilt.cost import training_flops
from gradfilt.ops.pruned import PrunedConv2d
from gradfilt.methods import EarlyInstanceFilter, ErrorMapPruning, Vanilla, build_method
from gradfilt.methods.eif import filter_network
from gradfilt.models import build_model


def _loop(model, method, steps, batch=16, size=28, seed=0):
    """A training loop calling the hooks as the classification module does; returns the kept masks."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    kept = []
    for step in range(steps):
        x, y = torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g)
        method.start_step(model, opt, step)
        keep = method.select_samples(model, x, y, step)
        kept.append(keep)
        x, y = x[keep], y[keep]
        losses = F.cross_entropy(model(x), y, reduction="none")
        method.after_forward(model, losses.detach(), step)
        loss = losses.mean()
        method.before_backward(model, loss, step)
        opt.zero_grad()
        loss.backward()
        method.after_backward(model, step)
        opt.step()
    return kept


@pytest.mark.parametrize("size, kind", [(28, "lenet"), (32, "resnet8"), (64, "resnet8")])
def test_filter_network_is_sized_to_the_input(size, kind):
    net = filter_network(3, size)
    assert net(torch.randn(2, 3, size, size)).shape == (2, 2)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if kind == "lenet":
        assert [c.out_channels for c in convs] == [6, 16] and all(c.kernel_size == (3, 3) for c in convs)
    else:  # ResNet-8: stem 16, three basic blocks of two convs with 16 / 32 / 64 filters
        assert [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 64, 64]
    assert filter_network(1, size)(torch.randn(2, 1, size, size)).shape == (2, 2)


def test_filter_network_choice_and_input_size():
    assert [c.out_channels for c in filter_network(3, 28, "resnet8").modules() if isinstance(c, nn.Conv2d)][0] == 16
    assert len([c for c in filter_network(3, 64, "slim_lenet").modules() if isinstance(c, nn.Conv2d)]) == 2
    net = filter_network(3, 28, input_size=14)
    assert isinstance(net[0], nn.AdaptiveAvgPool2d) and net(torch.randn(2, 3, 28, 28)).shape == (2, 2)
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(net[0](x), F.avg_pool2d(x, 2))  # what it sees: 2x2 means
    with pytest.raises(ValueError, match=r"unknown filter network 'vgg'; valid: \['auto', 'slim_lenet', 'resnet8'\]"):
        filter_network(3, 28, "vgg")
    method = EarlyInstanceFilter(filter_net="slim_lenet", filter_input_size=32)
    method.apply(build_model("resnet18", 10), torch.zeros(1, 3, 96, 96))
    assert method.tag == "eif0.3-slim_lenet-f32-vanilla-all"
    assert [type(m).__name__ for m in method.filter[:2]] == ["AdaptiveAvgPool2d", "Sequential"]
    assert method.filter[0].output_size == 32 and isinstance(method.filter[1][0], nn.Conv2d)


def test_the_filter_networks_forward_and_backward_are_the_methods_overhead():
    model = build_model("lenet", 10)
    method = EarlyInstanceFilter(filter_input_size=None)
    method.apply(model, torch.zeros(1, 3, 28, 28))
    report = method.cost(model, 28)
    inner = Vanilla(layers="all").cost(model, 28)
    assert (report.forward_flops, report.backward_flops) == (inner.forward_flops, inner.backward_flops)
    # slim LeNet on 3x28x28, by hand: convs 3x3 6 (28x28) and 16 (14x14), linear 256 -> 2
    forward = 2 * 6 * 3 * 9 * 28 * 28 + 2 * 16 * 6 * 9 * 14 * 14 + 2 * 256 * 2
    # the cost model's convention: a trained conv's weight (k^2 + 1) * C_out * C_in per output pixel, its
    # grad_x 2 * C_out * C_in * k^2 per output pixel; a trained linear layer 3 * in * out
    backward = (10 * 6 * 3 * 28 * 28  # conv1: weight, no grad_x (the images need none)
                + 10 * 16 * 6 * 14 * 14 + 2 * 16 * 6 * 9 * 14 * 14  # conv2: weight, grad_x
                + 3 * 256 * 2)  # linear
    assert report.overhead_flops == forward + backward
    assert training_flops(report, 0.25) == 0.25 * (inner.forward_flops + inner.backward_flops) + forward + backward
    smaller = EarlyInstanceFilter(filter_input_size=14)
    smaller.apply(build_model("lenet", 10), torch.zeros(1, 3, 28, 28))
    assert smaller.tag == "eif0.3-f14-vanilla-all"
    assert smaller.cost(model, 28).overhead_flops < report.overhead_flops / 3.5
    with pytest.raises(RuntimeError, match="before apply"):
        EarlyInstanceFilter().cost(model, 28)


def test_training_flops():
    report = Vanilla(layers="all").cost(build_model("lenet", 10), 28)
    assert training_flops(report) == report.forward_flops + report.backward_flops
    assert training_flops(report, 0.0) == 0
    with pytest.raises(ValueError, match=r"kept_fraction must be in \[0, 1\], got 1.5"):
        training_flops(report, 1.5)


def test_low_instances_skip_and_the_filter_learns_the_self_supervised_label():
    torch.manual_seed(0)
    model = build_model("lenet", 10)
    method = EarlyInstanceFilter(target_ratio=0.3, entropy_threshold=0.0, initial_threshold=2.3, a1=1.0 + 1e-9,
                                 a2=1.0 - 1e-9)
    method.apply(model, torch.zeros(1, 3, 28, 28))
    assert method.tag == "eif0.3-vanilla-all"
    x, y = torch.randn(8, 3, 28, 28), torch.randint(0, 10, (8,))
    keep = method.select_samples(model, x, y, 0)
    assert keep.dtype == torch.bool and keep.any()
    # the filter's step: group-weighted cross-entropy against loss >= T_l, on the kept instances only
    filt = method.filter
    before = {n: p.detach().clone() for n, p in filt.named_parameters()}
    logits = filt(x[keep]).detach()  # the filter's outputs for the kept instances, as select_samples saw them
    losses = torch.linspace(1.0, 4.0, int(keep.sum()))
    labels = losses >= 2.3
    w = torch.where(labels, 1 / 0.3, 1 / 0.7)
    w = w / w.sum()
    expected = (w * F.cross_entropy(logits, labels.long(), reduction="none")).sum()
    method.after_forward(model, losses, 0)
    assert method.metrics()["FilterLoss"] == pytest.approx(float(expected), rel=1e-5)
    assert any(not torch.equal(p, before[n]) for n, p in filt.named_parameters())  # the filter trained


def test_threshold_follows_the_high_ratio():
    model = build_model("lenet", 10)
    method = EarlyInstanceFilter(target_ratio=0.2, initial_threshold=1.0, a1=2.0, a2=0.5, window=1,
                                 entropy_threshold=0.0)
    method.apply(model, torch.zeros(1, 3, 28, 28))
    x, y = torch.randn(6, 3, 28, 28), torch.randint(0, 10, (6,))
    with torch.no_grad():  # the filter predicts High for everything: its High logit dominates
        method.filter[-1].bias.copy_(torch.tensor([-10.0, 10.0]))
    keep = method.select_samples(model, x, y, 0)
    assert keep.all()
    method.after_forward(model, torch.full((6,), 5.0), 0)  # all High: R_TH = 1 >= 0.2, T_l doubles
    assert method.threshold == 2.0 and method.metrics()["HighRatio"] == 1.0
    with torch.no_grad():
        method.filter[-1].bias.copy_(torch.tensor([-10.0, 10.0]))
    method.select_samples(model, x, y, 1)
    method.after_forward(model, torch.full((6,), 0.5), 1)  # none High: R_TH = 0 < 0.2, T_l halves
    assert method.threshold == 1.0 and method.metrics()["HighRatio"] == 0.0
    assert method.metrics()["FilterRecall"] != method.metrics()["FilterRecall"]  # no labelled High: NaN


def test_confident_lows_are_dropped_and_uncertain_ones_kept():
    model = build_model("lenet", 10)
    method = EarlyInstanceFilter(entropy_threshold=0.5)
    method.apply(model, torch.zeros(1, 3, 28, 28))
    x, y = torch.randn(4, 3, 28, 28), torch.randint(0, 10, (4,))
    with torch.no_grad():
        method.filter[-1].weight.zero_()
        method.filter[-1].bias.copy_(torch.tensor([5.0, -5.0]))  # confident Low for every instance
    keep = method.select_samples(model, x, y, 0)
    assert int(keep.sum()) == 1  # never empty: the most likely High is kept
    with torch.no_grad():
        method.filter[-1].bias.copy_(torch.tensor([0.1, -0.1]))  # Low, but unsure
    p = torch.tensor([0.1, -0.1]).softmax(0)
    assert float(-(p * p.log()).sum()) > 0.5  # entropy 0.688 nats, above the threshold
    assert method.select_samples(model, x, y, 1).all()


def test_composes_with_error_map_pruning_and_filters():
    model = build_model("resnet20", 10)
    method = build_method({"type": "eif", "method": {"type": "emp", "layers": "all", "alpha": 0.5,
                                                      "patch_size": 2}})
    method.apply(model, torch.zeros(1, 3, 32, 32))
    assert method.tag == "eif0.3-emp0.5-all-R2"
    assert all(isinstance(m, PrunedConv2d) and m.patch_size == 2 for m in model.modules() if isinstance(m, nn.Conv2d))
    kept = _loop(model, method, 6, size=32)
    assert all(k.any() for k in kept)
    metrics = method.metrics()
    assert {"Threshold", "HighRatio", "FilterLoss", "FilterPrecision", "FilterRecall"} <= set(metrics)
    assert method.cost(model, 32).backward_flops == ErrorMapPruning(layers="all", alpha=0.5, patch_size=2).cost(
        model, 32).backward_flops


@pytest.mark.parametrize("kwargs, message", [
    ({"target_ratio": 1.0}, r"target_ratio \(R_set, the share of High instances\) must be in \(0, 1\)"),
    ({"a1": 0.9}, r"a1 > 1 and 0 < a2 < 1"),
    ({"a2": 1.0}, r"a1 > 1 and 0 < a2 < 1"),
    ({"window": 0}, r"window must be an int >= 1"),
    ({"entropy_threshold": 1.0}, r"entropy_threshold must be in \[0, ln 2"),
    ({"method": {"type": "eif"}}, r"cannot wrap itself"),
    ({"method": {"type": "nope"}}, r"unknown method 'nope'"),
    ({"filter_net": "vgg"}, r"unknown filter_net 'vgg'; valid: \['auto', 'slim_lenet', 'resnet8'\]"),
    ({"filter_input_size": 4}, r"filter_input_size must be None or an int >= 8"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyInstanceFilter(**kwargs)


def test_default_wraps_vanilla_on_every_layer():
    method = EarlyInstanceFilter()
    assert isinstance(method.inner, Vanilla) and method.inner.layers == "all"
    assert method.fields()["method"] == "eif0.3-vanilla-all"
