"""Every Table 3 config (VOC and Cityscapes) loads, and its filter / freeze lists apply to the real model.

No data or weights are needed: the model is built with random weights and the config's method
is applied the way the runner applies it, which checks every path, type and patch size
(including r | d on dilated convs) against the networks mmseg really builds.
"""

from pathlib import Path

import pytest

from gradfilt import FilteredConv2d, GradientFilter, Vanilla
from segmentation import compat

compat.install()
from segmentation.runner import apply_method, configured_method  # noqa: E402  (needs the mmcv.ops stand-in)
from segmentation.train import load_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "segmentation"
DATASETS = {"voc12aug": ("voc12aug-512x512", 21), "cityscapes": ("cityscapes-512x1024", 19)}
MODELS = ["deeplabv3_r18-d8", "fcn_r18-d8", "pspnet_r18-d8", "upernet_r18", "deeplabv3_m-v2-d8", "pspnet_m-v2-d8"]
METHODS = ["", "_calibration", "_vanilla5l", "_vanilla10l", "_filter5l", "_filter10l"]


def _build(cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as REGISTRY

    init_default_scope("mmseg")
    return REGISTRY.build(cfg.model)


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_model_has_every_method(dataset):
    tag = DATASETS[dataset][0]
    names = {p.stem for p in (CONFIGS / dataset).glob("*.py")}
    assert names == {f"{m}_1xb8-20k_{tag}{s}" for m in MODELS for s in METHODS}


@pytest.mark.parametrize("dataset", [pytest.param(d, marks=pytest.mark.slow) if d == "cityscapes" else d
                                     for d in DATASETS])  # the same models and methods: VOC in the fast tier
@pytest.mark.parametrize("model", MODELS)
def test_layer_selections_apply(model, dataset):
    tag, classes = DATASETS[dataset]
    base = f"{model}_1xb8-20k_{tag}"
    folder = CONFIGS / dataset
    counts = {}
    for depth in ("5l", "10l"):
        cfg = load_config(str(folder / f"{base}_filter{depth}.py"))
        vanilla = configured_method(load_config(str(folder / f"{base}_vanilla{depth}.py")))
        assert type(vanilla) is Vanilla and vanilla.freeze == configured_method(cfg).freeze  # same layers train
        net = _build(cfg)
        method = apply_method(net, cfg)  # what the runner does right after building the model
        assert type(method) is GradientFilter and "-custom-" in method.tag
        installed = method.filtered_convs
        assert all(net.get_submodule(n).weight.requires_grad for n in installed)  # filtered layers train
        assert all(isinstance(net.get_submodule(n), FilteredConv2d) for n in installed)
        counts[depth] = len(installed)
        assert cfg.train_cfg.max_iters == 20000 and cfg.train_dataloader.batch_size == 8
        assert cfg.model.decode_head.num_classes == classes
    assert 0 < counts["5l"] < counts["10l"]
    calib = load_config(str(folder / f"{base}_calibration.py"))
    assert calib.train_cfg.max_iters == (5000 if "m-v2" in model else 1000)


def test_parallel_aspp_branches_on_a_frozen_backbone_compute_no_grad_x():
    cfg = load_config(str(CONFIGS / "voc12aug" / "deeplabv3_r18-d8_1xb8-20k_voc12aug-512x512_filter5l.py"))
    net = _build(cfg)
    method = apply_method(net, cfg)
    layers = {layer.name: layer for layer in method.cost(net, (64, 64)).layers}
    assert [n for n in layers if n.startswith("decode_head.aspp_modules")] == [
        f"decode_head.aspp_modules.{i}.conv" for i in range(4)]
    assert not any(layers[f"decode_head.aspp_modules.{i}.conv"].needs_grad_input for i in range(4))
    assert layers["decode_head.bottleneck.conv"].needs_grad_input  # it reads the trained branches' outputs


def test_methods_the_runner_cannot_drive_are_refused_by_name():
    cfg = load_config(str(CONFIGS / "voc12aug" / "fcn_r18-d8_1xb8-20k_voc12aug-512x512_vanilla5l.py"))
    cfg.method = dict(type="dynamic_sparse", memory_budget="1MB")
    with pytest.raises(ValueError, match=r"method dyn-rotation-u0.02-1MB: per-step parameter moves \(start_step\), "
                                         r"calibration on training batches is not supported by the segmentation"):
        configured_method(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("model,backbone_blocks", [("deeplabv3_m-v2-d8", ["backbone.layer6.2", "backbone.layer7.0"]),
                                                    ("deeplabv3_r18-d8", ["backbone.layer4.0", "backbone.layer4.1"])])
def test_mmseg_blocks_with_frozen_batchnorm_equal_the_per_layer_filters(model, backbone_blocks):
    """DeepLabV3 filter-10L on MMSegmentation's MobileNetV2 and ResNet-18 (dilated: d8), BatchNorms frozen: the
    backbone's InvertedResiduals (built of mmcv ConvModules) or BasicBlocks and the head's ConvModules run on the
    patch grid with the per-layer gradients (float64)."""
    import torch

    cfg = load_config(str(CONFIGS / "voc12aug" / f"{model}_1xb8-20k_voc12aug-512x512_filter10l.py"))
    specs = cfg.layer_list.filter_install
    convs = [spec["path"] + (".conv" if spec["type"] == "cbr" else "") for spec in specs]
    assert {spec["type"] for spec in specs} <= {"cbr", "conv"}
    frozen_bn = ["", "~decode_head.conv_seg", *(f"~{conv}" for conv in convs)]
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 21, (2, 12, 12), generator=torch.Generator().manual_seed(1))
    grads, reports = {}, {}
    for grid in (False, True):
        torch.manual_seed(0)
        net = _build(cfg).double()
        net.init_weights()
        method = GradientFilter(freeze=frozen_bn, filter_install=list(specs), patch_grid=grid)
        method.apply(net, x[:1])
        reports[grid] = method.patch_grid_report
        net.train().zero_grad(set_to_none=True)
        logits = net.decode_head(net.extract_feat(x))  # (2, 21, 12, 12): stride 8
        torch.nn.functional.cross_entropy(logits, target).backward()
        grads[grid] = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert sorted(reports[True].blocks) == sorted([*backbone_blocks, "decode_head.bottleneck",
                                                   *(f"decode_head.aspp_modules.{i}" for i in range(4))])
    assert reports[True].per_layer == {}
    ref, got = grads[False], grads[True]
    assert sorted(got) == sorted(ref) and len(ref) == 2 + len(specs)  # the classifier's weight and bias, the convs
    for name in ref:
        assert torch.allclose(got[name], ref[name], rtol=0, atol=1e-12 * ref[name].abs().max()), name
