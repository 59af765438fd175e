"""Error-map pruning: the pruned backward against the dense one on the kept channels, real savings, the method."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradfilt.ops.pruned as emp
from gradfilt import FilteredConv2d, filtered_conv2d
from gradfilt.cost import conv_cost, estimate_configured
from gradfilt.methods import estimate
from gradfilt.ops.pruned import PrunedConv2d
from gradfilt.methods import ErrorMapPruning, build_method
from gradfilt.models import build_model
from gradfilt.surgery.trace import trace_layers


def _reference_kept(weight, grad_y, alpha, g1, g2):
    """Top ceil(alpha * C) channels of g1 * ||W_j||_1 + g2 * ||delta_j||_1, written out channel by channel."""
    scores = []
    for j in range(weight.shape[0]):
        scores.append((g1 * float(weight[j].abs().sum()) + g2 * float(grad_y[:, j].abs().sum()), j))
    count = max(1, math.ceil(alpha * weight.shape[0]))
    return sorted(j for _, j in sorted(scores, key=lambda t: (-t[0], t[1]))[:count])


# (patch size, kernel, stride, padding, dilation); dilation 2 with r = 4 is a geometry the filter rejects
GEOMETRIES = [(r, *g) for r in (None, 2, 4) for g in ((3, 1, 1, 1), (1, 1, 0, 1), (3, 2, 1, 1), (3, 1, 2, 2))
              if not (r == 4 and g[3] == 2)]


@pytest.mark.parametrize("patch_size, kernel, stride, padding, dilation", GEOMETRIES)
@pytest.mark.parametrize("alpha, g1, g2", [(0.25, 0.0, 1.0), (0.5, 1.0, 1.0), (0.6, 2.0, 0.0), (1.0, 0.5, 0.5)])
def test_backward_equals_the_dense_one_with_the_pruned_channels_zeroed(patch_size, kernel, stride, padding, dilation,
                                                                        alpha, g1, g2):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 8, kernel, stride, padding, dilation).double()
    pruned = PrunedConv2d.from_conv(conv, alpha, g1, g2, patch_size)
    x = torch.randn(3, 5, 12, 12, dtype=torch.float64, requires_grad=True)
    y = pruned(x)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, pruned.weight, pruned.bias), g)
    kept = _reference_kept(conv.weight.detach(), g, alpha, g1, g2)
    assert pruned.last_kept.tolist() == kept
    masked = torch.zeros_like(g)
    masked[:, kept] = g[:, kept]
    x2 = x.detach().clone().requires_grad_(True)
    y2 = conv(x2) if patch_size is None else filtered_conv2d(x2, conv.weight, conv.bias, stride, padding, dilation,
                                                             patch_size=patch_size)
    assert torch.equal(y, y2)  # the forward is the conv's
    rx, rw, rb = torch.autograd.grad(y2, (x2, conv.weight, conv.bias), masked)
    torch.testing.assert_close(gx, rx, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=0, atol=1e-12)
    torch.testing.assert_close(gb, rb, rtol=0, atol=1e-12)
    pruned_off = [j for j in range(8) if j not in kept]
    assert torch.equal(gw[pruned_off], torch.zeros_like(gw[pruned_off]))  # exactly zero, not small
    assert torch.equal(gb[pruned_off], torch.zeros_like(gb[pruned_off]))


@pytest.mark.parametrize("patch_size", [None, 2])
def test_the_backward_runs_on_the_kept_channels_only(monkeypatch, patch_size):
    calls = {}

    def spy(name):
        fn = getattr(emp, name)

        def wrapped(*args, **kwargs):
            calls[name] = args
            return fn(*args, **kwargs)
        return wrapped

    for name in ("conv2d_input", "conv2d_weight", "filtered_backward"):
        monkeypatch.setattr(emp, name, spy(name))
    pruned = PrunedConv2d.from_conv(nn.Conv2d(4, 16, 3, padding=1), 0.25, 0.0, 1.0, patch_size)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    pruned(x).sum().backward()
    if patch_size is None:  # conv2d_input(x size, W[K], g_y[:, K]), conv2d_weight(x, W[K] size, g_y[:, K])
        assert set(calls) == {"conv2d_input", "conv2d_weight"}
        assert calls["conv2d_input"][1].shape == (4, 4, 3, 3) and calls["conv2d_input"][2].shape == (2, 4, 8, 8)
        assert tuple(calls["conv2d_weight"][1]) == (4, 4, 3, 3) and calls["conv2d_weight"][2].shape == (2, 4, 8, 8)
    else:  # filtered_backward(g_y[:, K], x~, W[K], ...)
        assert set(calls) == {"filtered_backward"}
        assert calls["filtered_backward"][0].shape == (2, 4, 8, 8)
        assert calls["filtered_backward"][2].shape == (4, 4, 3, 3)


def test_scores_use_the_weight_norm_too():
    conv = nn.Conv2d(3, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 100.0, 2.0, 3.0]).view(4, 1, 1, 1).expand(4, 3, 1, 1))
    pruned = PrunedConv2d.from_conv(conv, 0.25, 1.0, 0.0)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    pruned(x).sum().backward()
    assert pruned.last_kept.tolist() == [1]


def test_method_on_resnet20_from_scratch_prunes_every_conv_and_trains():
    model = build_model("resnet20", 10)
    method = build_method({"type": "emp", "layers": "all", "alpha": 0.5})
    method.apply(model, torch.zeros(1, 3, 28, 28))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(isinstance(model.get_submodule(n), PrunedConv2d) for n in convs)
    assert method.tag == "emp0.5-all" and method.pruned_convs == convs
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    x, y = torch.randn(8, 3, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        for n in convs:
            conv = model.get_submodule(n)
            off = torch.ones(conv.out_channels, dtype=torch.bool)
            off[conv.last_kept] = False
            assert conv.last_kept.numel() == math.ceil(0.5 * conv.out_channels)
            assert not conv.weight.grad[off].any()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_pruning_then_filtering_is_configuration():
    model = build_model("resnet18", 10)
    method = ErrorMapPruning(layers=2, alpha=0.5, patch_size=2)
    method.apply(model, torch.zeros(1, 3, 64, 64))
    assert method.tag == "emp0.5-2L-R2"
    for name in ("layer4.1.conv1", "layer4.1.conv2"):
        conv = model.get_submodule(name)
        assert isinstance(conv, PrunedConv2d) and conv.patch_size == 2 and conv.weight.requires_grad
    assert not model.layer4[0].conv2.weight.requires_grad and model.fc.weight.requires_grad
    mbv2 = build_model("mobilenet_v2", 10)
    ErrorMapPruning(layers=4, patch_size=2).apply(mbv2, torch.zeros(1, 3, 64, 64))
    assert isinstance(mbv2.features[17].conv[1][0], FilteredConv2d)  # a trained depthwise conv: filtered only


def test_per_layer_patch_sizes_and_their_errors():
    model = build_model("resnet18", 10)
    specs = [{"path": "layer4.1.conv2", "patch_size": 4, "type": "conv"}]
    method = ErrorMapPruning(layers=2, alpha=0.5, filter_install=specs)
    method.apply(model, torch.zeros(1, 3, 64, 64))
    assert model.layer4[1].conv2.patch_size == 4 and model.layer4[1].conv1.patch_size is None
    assert isinstance(model.layer4[1].conv1, PrunedConv2d) and method.tag.startswith("emp0.5-2L-R4-")
    with pytest.raises(ValueError, match="not both"):
        ErrorMapPruning(layers=2, patch_size=2, filter_install=specs)
    with pytest.raises(ValueError, match="non-empty list"):
        ErrorMapPruning(layers=2, filter_install=[])
    untouched = build_model("resnet18", 10)
    before = {n: type(m) for n, m in untouched.named_modules()}
    wrong = ErrorMapPruning(layers=2, filter_install=[{"path": "layer3.1.conv2", "patch_size": 2, "type": "conv"}])
    with pytest.raises(ValueError, match=r"selects \['layer3.1.conv2'\], which do not train"):
        wrong.apply(untouched, torch.zeros(1, 3, 64, 64))
    assert {n: type(m) for n, m in untouched.named_modules()} == before
    assert all(p.requires_grad for p in untouched.parameters())


def test_cost_counts_the_kept_channels_and_the_scoring():
    model = build_model("resnet20", 10)
    ErrorMapPruning(layers="all", alpha=0.25).apply(model, torch.zeros(1, 3, 32, 32))
    report = estimate_configured(model, 32, batch_size=4)
    assert {layer.type for layer in report.layers} == {"conv-emp", "linear"}
    last = next(c for c in trace_layers(model, torch.zeros(1, 3, 32, 32)) if c.name == "9.conv2")
    layer = next(layer for layer in report.layers if layer.name == "9.conv2")
    kept = math.ceil(0.25 * 64)  # (64, 8, 8) output
    subset = type(last)(last.name, last.module, last.in_shape, (kept, 8, 8), last.shortcut, last.grad_input)
    expected = conv_cost(subset, None, True, 4)[0] + 64 * 64 * 9 + 4 * 64 * 64 + 3 * 64
    assert layer.flops == expected
    assert layer.activation_bytes == 4 * 64 * 8 * 8 * 4  # the whole input: any channel may be kept
    dense = estimate(build_model("resnet20", 10), 32, "all", batch_size=4)
    assert report.backward_flops < 0.4 * dense.backward_flops
    assert report.activation_bytes == dense.activation_bytes


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 0.0}, r"alpha \(the kept share of output channels\) must be in \(0, 1\]"),
    ({"alpha": 1.5}, r"alpha"),
    ({"g1": 0.0, "g2": 0.0}, r"g1 and g2 weigh the two score terms"),
    ({"g1": -1.0}, r"g1 and g2"),
    ({"patch_size": 0}, r"patch_size"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ErrorMapPruning(**kwargs)


def test_layer_errors():
    with pytest.raises(ValueError, match=r"prunes dense convs \(groups=1\), got groups=4"):
        PrunedConv2d(8, 8, 3, groups=4, alpha=0.5, g1=0.0, g2=1.0)
    with pytest.raises(TypeError, match="expects a plain torch.nn.Conv2d"):
        PrunedConv2d.from_conv(FilteredConv2d(3, 3, 3, patch_size=2), 0.5, 0.0, 1.0)


def test_explicit_freeze_list_prunes_the_convs_it_leaves_trainable():
    model = build_model("resnet18", 10)
    method = ErrorMapPruning(freeze=["", "~layer4.1", "~fc"], alpha=0.25)
    method.apply(model, torch.zeros(1, 3, 64, 64))
    assert method.pruned_convs == ["layer4.1.conv1", "layer4.1.conv2"] == method.trained_convs
    assert all(isinstance(model.get_submodule(n), PrunedConv2d) for n in method.pruned_convs)
    assert type(model.layer4[0].conv1) is nn.Conv2d and not model.layer4[0].conv1.weight.requires_grad
