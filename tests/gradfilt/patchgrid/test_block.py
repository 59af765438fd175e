"""Patch-grid blocks: the same gradients as the per-layer filters (float64), the saved bytes, the fallbacks."""

import copy
import warnings

import pytest
import torch
from torch import nn

from gradfilt.patchgrid import PatchGridBlock, install_patch_grid, mul_counts_
from gradfilt.patchgrid import carried
from gradfilt.patchgrid.carried import pack_bits, unpack_bits
from gradfilt.cost import measure
from gradfilt.surgery.fuse import fuse_bn
from gradfilt.surgery.install import install_filters
from gradfilt.methods import GradientFilter, Vanilla
from gradfilt.models import build_model

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA GPU"))]


def _built(arch, method, fold=False, size=64, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = build_model(arch, 10).to(dtype)
    x = torch.randn(2, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(1))
    if fold:
        fuse_bn(model.eval(), x)
    method.apply(model, x[:1])
    return model.train(), x


def _grads(model, x, device="cpu"):
    model.to(device).zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same dropout mask on both sides
    out = model(x.to(device))
    nn.functional.cross_entropy(out, torch.arange(len(x), device=device)).backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _compare(arch, fold=False, size=64, device="cpu", dtype=torch.float64, tol=1e-12, **kwargs):
    """Per-layer vs patch-grid set-ups of one method: equal outputs, the same parameters trained, equal gradients
    (within ``tol`` of each gradient's largest entry)."""
    per_layer, x = _built(arch, GradientFilter(patch_grid=False, **kwargs), fold, size, dtype=dtype)
    method = GradientFilter(**kwargs)
    grid, _ = _built(arch, method, fold, size, dtype=dtype)
    out_ref, ref = _grads(per_layer, x, device)
    out, got = _grads(grid, x, device)
    assert torch.equal(out, out_ref)
    assert sorted(got) == sorted(ref) and ref
    for name in ref:
        scale = ref[name].abs().max().clamp_min(1e-300)
        assert torch.allclose(got[name], ref[name], rtol=0, atol=tol * scale), name
    return method.patch_grid_report, grid


@pytest.mark.parametrize("arch,layers,fold,blocks", [
    ("resnet18", 1, False, ["layer4.1"]),
    ("resnet18", 2, True, ["layer4.1"]),
    ("resnet18", 3, False, ["layer4.0", "layer4.1"]),
    ("resnet18", 4, True, ["layer4.0", "layer4.1"]),
    ("resnet18", 5, False, ["layer3.1", "layer4.0", "layer4.1"]),
    ("resnet34", 2, False, ["layer4.2"]),
    ("resnet34", 4, True, ["layer4.1", "layer4.2"]),
    ("mobilenet_v2", 4, False, ["features.17", "features.18"]),  # the last 2 blocks
    ("mobilenet_v2", 10, True, ["features.15", "features.16", "features.17", "features.18"]),  # the last 4
    ("mcunet", 6, True, ["13", "14"]),
    ("mcunet", 12, False, ["11", "12", "13", "14"]),
])
@pytest.mark.parametrize("patch_size", [2, 4])
def test_gradients_equal_the_per_layer_filters(arch, layers, fold, blocks, patch_size):
    report, _ = _compare(arch, fold, layers=layers, patch_size=patch_size)
    assert report.blocks == blocks and report.per_layer == {}


@pytest.mark.parametrize("arch,layers,blocks", [("resnet18", 4, ["layer4.0", "layer4.1"]),
                                                ("mobilenet_v2", 4, ["features.17", "features.18"])])
def test_float32_gradients_match_the_per_layer_filters(arch, layers, blocks, onednn_products):
    """float32, the grid products of both set-ups as oneDNN 1x1 convs on the CPU (here at any batch size)."""
    report, _ = _compare(arch, True, dtype=torch.float32, tol=1e-5, layers=layers, patch_size=2)
    assert report.blocks == blocks and report.per_layer == {}
    assert onednn_products  # the oneDNN products ran


@pytest.mark.parametrize("device", DEVICES)
def test_a_whole_stage_from_explicit_lists(device):
    """ResNet-18 layer4 as the installer's explicit lists (one resnet_layer entry, a freeze list), 96 x 96 input:
    3 x 3 maps, so r = 2 has partial patches."""
    bns = ["layer4.0.bn1", "layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2"]
    report, grid = _compare("resnet18", size=96, device=device, freeze=["", "~layer4", "~fc", *bns],
                            filter_install=[{"path": "layer4", "patch_size": 2, "type": "resnet_layer"}])
    assert report.blocks == ["layer4.0", "layer4.1"]
    assert all(p.grad is None for n, p in grid.named_parameters() if not n.startswith(("layer4", "fc")) or "bn" in n)


def test_mixed_patch_sizes_and_vanilla_layers_in_one_chain():
    """r = 2 and r = 4 in one block, an unfiltered trained conv, a frozen filtered conv: still the per-layer values."""
    _compare("resnet18", size=128, freeze=["", "~layer4.1", "~fc"],
             filter_install=[{"path": "layer4.1.conv2", "patch_size": 2, "type": "conv"},
                             {"path": "layer4.1.conv1", "patch_size": 4, "type": "conv"},
                             {"path": "layer4.0.conv2", "patch_size": 2, "type": "conv"}])


def test_saved_bytes_are_the_patch_sums_and_the_mask_bits():
    """ResNet-18, last 2 layers, batch 8, 224 x 224, BN folded: x~ of both convs (2 x 8 x 512 x 4 x 4 floats),
    the inner ReLU's mask as patch counts (8 x 512 x 4 x 4 bytes: only conv1 reads it, on the patch grid), the
    outer one as bits (8 x 512 x 49 / 8 bytes: the identity path reads it) and the classifier's input."""
    saved = {}
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for name, method in {"vanilla": Vanilla(layers=2), "per-layer": GradientFilter(layers=2, patch_size=2,
                                                                                   patch_grid=False),
                         "grid": GradientFilter(layers=2, patch_size=2)}.items():
        torch.manual_seed(0)
        model = build_model("resnet18", 10)
        fuse_bn(model.eval(), x[:2])
        method.apply(model, x[:1])
        saved[name] = measure(model.train(), x)
    assert saved["grid"] == {"conv": 2 * 8 * 512 * 16 * 4, "batchnorm": 0, "activation": 8 * 512 * 16 + 8 * 512 * 49 // 8,
                             "linear": 8 * 512 * 4, "other": 0, "total": 631296}
    assert saved["grid"]["total"] <= 0.4 * saved["vanilla"]["total"]
    assert saved["per-layer"]["total"] > 0.85 * saved["vanilla"]["total"]  # the ReLU outputs kept in full


def test_reasons_for_convs_left_per_layer():
    model, x = _built("resnet18", GradientFilter(freeze=["", "~layer4.1", "~conv1", "~fc"], filter_install=[
        {"path": "layer4.1", "patch_size": 2, "type": "basic_block"}, {"path": "conv1", "patch_size": 2,
                                                                      "type": "conv"}]))
    assert not isinstance(model.layer4[1], PatchGridBlock)  # its BatchNorms train
    report = install_patch_grid(model, x[:1])
    assert report.blocks == []
    assert report.per_layer["layer4.1.conv1"].startswith("BasicBlock 'layer4.1': bn1: the BatchNorm trains its affine")
    assert report.per_layer["conv1"].startswith("not inside a block with a patch-grid program (known: BasicBlock")


def test_batch_statistics_fall_back_to_the_per_layer_forward():
    """update_frozen_bn_stats: the frozen BatchNorms normalize with batch statistics, so the block runs per layer."""
    (out_ref, ref), (out, got) = [
        _grads(*_built("resnet18", GradientFilter(layers=2, patch_size=2, patch_grid=grid,
                                                  update_frozen_bn_stats=True)))
        for grid in (False, True)]
    assert torch.equal(out, out_ref) and all(torch.equal(got[n], ref[n]) for n in ref)


def test_block_outputs_read_twice_or_changed_in_place():
    """The gradient a block leaves in its producer's slot adds to what autograd brings (a second reader), and a
    block's output changed in place after it was written goes back to autograd's full gradient."""
    torch.manual_seed(0)
    per_layer = build_model("resnet18", 10).layer4.double().train()
    install_filters(per_layer, [{"path": "", "patch_size": 2, "type": "resnet_layer"}])
    for bn in per_layer.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.eval().requires_grad_(False)
    grid = copy.deepcopy(per_layer)
    install_patch_grid(grid, torch.zeros(1, 256, 8, 8, dtype=torch.float64))
    x = torch.randn(2, 256, 8, 8, dtype=torch.float64, requires_grad=True)

    def run(model, twice, in_place):
        model.zero_grad(set_to_none=True)
        x.grad = None
        mid = model[0](x)
        if in_place:  # autograd's own ReLU backward (per layer) needs the output unchanged: out of place there
            mid = mid.mul_(1.5) if model is grid else mid * 1.5
        out = model[1](mid)
        loss = out.square().sum() + (mid.sum() if twice else 0)
        loss.backward()
        return [x.grad] + [p.grad for p in model.parameters() if p.requires_grad]

    assert isinstance(grid[0], PatchGridBlock)
    for twice, in_place in [(False, False), (True, False), (False, True)]:
        for a, b in zip(run(per_layer, twice, in_place), run(grid, twice, in_place)):
            assert torch.allclose(a, b, rtol=0, atol=1e-12 * a.abs().max())


def test_state_dict_deepcopy_and_folding_after_install():
    """Same parameter names; a deep copy and BatchNorm folded after the install keep the per-layer gradients."""
    per_layer, x = _built("resnet18", GradientFilter(layers=3, patch_size=2, patch_grid=False))
    grid, _ = _built("resnet18", GradientFilter(layers=3, patch_size=2))
    assert list(grid.state_dict()) == list(per_layer.state_dict())
    per_layer, grid = copy.deepcopy(per_layer), copy.deepcopy(grid)
    for model in (per_layer, grid):
        fuse_bn(model.eval(), x)
        model.layer4[1].conv1.weight.requires_grad_(True)
        model.layer4[1].conv1.bias.requires_grad_(True)
    assert isinstance(grid.layer4[1].bn1, nn.Identity)
    (_, ref), (_, got) = _grads(per_layer.train(), x), _grads(grid.train(), x)
    assert sorted(got) == sorted(ref)
    assert all(torch.allclose(got[n], ref[n], rtol=0, atol=1e-12 * ref[n].abs().max()) for n in ref)


def test_eval_mode_runs_the_per_layer_forward():
    grid, x = _built("resnet18", GradientFilter(layers=2, patch_size=2))
    grid.eval()
    out = grid(x)
    assert "ChainFn" not in type(out.grad_fn.next_functions[0][0]).__name__
    names = set()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions if n is not None)
    assert not any("ChainFn" in n for n in names) and any("Filtered" in n for n in names)


@pytest.mark.parametrize("shape", [(3,), (2, 5, 3, 3), (1, 8, 7, 7)])
def test_masks_pack_to_bits_and_back(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    bits = pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(bits, mask.shape, torch.float32), mask.float())


def test_mask_counts_multiply_in_batch_slices(monkeypatch):
    """Byte counts widen one batch slice at a time (here one image per slice): the same product as at once."""
    monkeypatch.setattr(carried, "_CHUNK_BYTES", 64)
    grid = torch.randn(3, 5, 4, 4, generator=torch.Generator().manual_seed(0))  # (C, N, Hp, Wp)
    counts = torch.randint(0, 5, (5, 4, 4, 3), dtype=torch.uint8).permute(3, 0, 1, 2)  # patch-major, as kept
    expected = grid * counts.float()
    assert torch.equal(mul_counts_(grid, counts), expected) and torch.equal(grid, expected)


def test_installing_again_changes_nothing():
    """A second install leaves the patch-grid blocks (and the conv-norm-act blocks inside them) as they are."""
    model, x = _built("mobilenet_v2", GradientFilter(layers=4, patch_size=2))
    before = {name: type(m) for name, m in model.named_modules()}
    report = install_patch_grid(model, x[:1])
    assert report.blocks == [] and report.per_layer == {}
    assert {name: type(m) for name, m in model.named_modules()} == before


def _conv_module_head(norm: bool = True, **first) -> nn.Module:
    """A small segmentation-style head of mmcv ConvModules: 3x3 ReLU, 3x3 dilated ReLU6, 1x1, then a classifier."""
    conv_module = pytest.importorskip("mmcv.cnn").ConvModule
    norm_cfg = dict(type="BN") if norm else None
    torch.manual_seed(0)
    return nn.Sequential(
        conv_module(8, 16, 3, padding=1, norm_cfg=norm_cfg, **first),
        conv_module(16, 16, 3, padding=2, dilation=2, norm_cfg=norm_cfg, act_cfg=dict(type="ReLU6")),
        conv_module(16, 12, 1, norm_cfg=norm_cfg),
        nn.Conv2d(12, 5, 1)).double()


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("patch_size", [2, 4])
def test_mmcv_conv_modules_equal_the_per_layer_filters(norm, patch_size):
    """mmcv's ConvModule (MMSegmentation's conv-norm-act) with frozen BatchNorm: every one runs on the patch grid
    with the per-layer gradients (float64), and its parameter names do not change."""
    x = torch.randn(2, 8, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 5, (2, 12, 12), generator=torch.Generator().manual_seed(2))
    grads, names = {}, {}
    for grid in (False, True):
        model = _conv_module_head(norm)
        method = GradientFilter(freeze=["", "~0.conv", "~1.conv", "~2.conv", "~3"], patch_grid=grid,
                                filter_install=[{"path": str(i), "patch_size": patch_size, "type": "cbr"}
                                                for i in range(3)])
        method.apply(model, x[:1])
        names[grid] = list(model.state_dict())
        model.train().zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), target).backward()
        grads[grid] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert method.patch_grid_report.blocks == ["0", "1", "2"] and method.patch_grid_report.per_layer == {}
    assert all(isinstance(model[i], PatchGridBlock) for i in range(3)) and names[True] == names[False]
    ref, got = grads[False], grads[True]
    assert sorted(got) == sorted(ref) == sorted(f"{i}.conv.{p}" for i in range(3) for p in
                                                ("weight",) + (() if norm else ("bias",))) + ["3.bias", "3.weight"]
    for name in ref:
        assert torch.allclose(got[name], ref[name], rtol=0, atol=1e-12 * ref[name].abs().max()), name


@pytest.mark.parametrize("kwargs,freeze,why", [
    ({}, "~0", "bn: the BatchNorm trains its affine parameters"),
    (dict(padding_mode="reflect"), "~0.conv", "the block: ConvModule pads with a ReflectionPad2d layer"),
    (dict(efficient_conv_bn_eval=True), "~0.conv", "the block: ConvModule runs its BatchNorm fused into the conv"),
])
def test_conv_modules_that_cannot_run_on_the_patch_grid_say_why(kwargs, freeze, why):
    model = _conv_module_head(**kwargs)
    GradientFilter(freeze=["", freeze, "~3"], patch_grid=False,
                   filter_install=[{"path": "0", "patch_size": 2, "type": "cbr"}]).apply(model, torch.zeros(1, 8, 8, 8))
    report = install_patch_grid(model.train(), torch.zeros(1, 8, 8, 8, dtype=torch.float64))
    assert report.blocks == [] and report.per_layer["0.conv"].startswith(f"ConvModule '0': {why}")


def test_a_training_step_off_the_patch_grid_says_so_once_and_in_the_metrics():
    model = build_model("resnet18", 10)
    fuse_bn(model, torch.randn(2, 3, 64, 64))
    method = GradientFilter(layers=2, patch_size=2)
    method.apply(model, torch.zeros(1, 3, 64, 64))
    model.train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    assert method.metrics() == {"PerLayerBlocks": 0.0}
    with pytest.warns(UserWarning, match=r"patch-grid block layer4.1 runs its backward per layer: autocast"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x).float().sum().backward()
    assert method.metrics() == {"PerLayerBlocks": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.eval()(x)  # evaluation is no training step: nothing to say
        model.train()(x).sum().backward()
    assert method.metrics() == {"PerLayerBlocks": 0.0}
