"""Early instance filtering: the filter network, its self-supervised training, the threshold, composition."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradfilt.emp import PrunedConv2d
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
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyInstanceFilter(**kwargs)


def test_default_wraps_vanilla_on_every_layer():
    method = EarlyInstanceFilter()
    assert isinstance(method.inner, Vanilla) and method.inner.layers == "all"
    assert method.fields()["method"] == "eif0.3-vanilla-all"
