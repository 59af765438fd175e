"""The cost model against every published cell of docs/paper.md, plus measured memory and the CLI."""

import json
import re

import pytest
import torch

from gradfilt import freeze, install_filters
from gradfilt.cost import estimate_configured, measure
from gradfilt.methods import estimate
from gradfilt.cli import cost_main as main
from gradfilt.models import build_model

M, G, K = 1e6, 1e9, 1e3

# Table 11: (arch, classes) -> strategy -> FLOPs for #Layers = 1, 2, 3, 4 (None: vanilla)
TABLE11 = {
    ("resnet18", 10): {None: [128.25 * M, 487.68 * M, 847.15 * M, 1.14 * G], 2: [8.18 * M, 26.80 * M, 45.45 * M, 60.01 * M],
                       4: [1.88 * M, 7.93 * M, 13.99 * M, 19.12 * M], 7: [303.10 * K, 3.21 * M, 6.12 * M, 8.90 * M]},
    ("resnet34", 10): {None: [128.25 * M, 487.68 * M, 847.13 * M, 1.21 * G], 2: [8.18 * M, 26.80 * M, 45.44 * M, 64.07 * M],
                       4: [1.88 * M, 7.93 * M, 13.98 * M, 20.04 * M], 7: [303.10 * K, 3.21 * M, 6.12 * M, 9.03 * M]},
    ("resnet18", 100): {None: [128.39 * M, 487.82 * M, 847.29 * M, 1.14 * G], 2: [8.31 * M, 26.94 * M, 45.59 * M, 60.15 * M],
                        4: [2.02 * M, 8.07 * M, 14.12 * M, 19.26 * M], 7: [441.34 * K, 3.35 * M, 6.26 * M, 9.04 * M]},
    ("resnet34", 100): {None: [128.39 * M, 487.82 * M, 847.27 * M, 1.21 * G], 2: [8.31 * M, 26.94 * M, 45.58 * M, 64.21 * M],
                        4: [2.02 * M, 8.07 * M, 14.12 * M, 20.17 * M], 7: [441.34 * K, 3.35 * M, 6.26 * M, 9.17 * M]},
}

KB, MB = 1024, 1024**2
# Table 2 (ImageNet, 1000 classes): arch -> {(strategy, #layers): bytes}
TABLE2_MEMORY = {
    "mobilenet_v2": {(None, 2): 245.00 * KB, (None, 4): 459.38 * KB, (2, 2): 80.00 * KB, (2, 4): 150.00 * KB},
    "resnet18": {(None, "all"): 8.33 * MB, (None, 2): 196.00 * KB, (None, 4): 490.00 * KB, (2, 2): 64.00 * KB,
                 (2, 4): 112.00 * KB},
    "mcunet": {(None, 2): 220.50 * KB, (None, 4): 312.38 * KB, (2, 2): 72.00 * KB, (2, 4): 102.00 * KB},
    "resnet34": {(None, "all"): 13.11 * MB, (None, 2): 196.00 * KB, (None, 4): 392.00 * KB, (2, 2): 64.00 * KB,
                 (2, 4): 128.00 * KB},
}
TABLE2_FLOPS = {
    "resnet18": {(None, 2): 489.20 * M, (None, 4): 1.14 * G, (2, 2): 28.32 * M, (2, 4): 61.53 * M},
    "resnet34": {(None, 2): 489.20 * M, (None, 4): 1.21 * G, (2, 2): 28.32 * M},
}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(arch, classes=1000):
        if (arch, classes) not in cache:
            cache[arch, classes] = build_model(arch, classes)
        return cache[arch, classes]

    return get


@pytest.mark.parametrize("arch,classes", TABLE11.keys())
def test_table11_flops_within_one_percent(models, arch, classes):
    model = models(arch, classes)
    for patch_size, cells in TABLE11[arch, classes].items():
        for layers, published in enumerate(cells, start=1):
            flops = estimate(model, 224, layers, patch_size).backward_flops
            assert flops == pytest.approx(published, rel=0.01), (patch_size, layers)


def test_worked_cell_is_exact(models):
    # docs/paper.md: ResNet-18, CIFAR-10, 1 layer, R7 = 3*512*10 + 512*(49+1) + 512*512*(2*1-1)
    assert estimate(models("resnet18", 10), 224, 1, 7).backward_flops == 303_104
    # CIFAR-100 differs from CIFAR-10 by exactly the classifier's 3*512*90
    for patch_size in (None, 2, 4, 7):
        for layers in (1, 2, 3, 4):
            diff = (estimate(models("resnet18", 100), 224, layers, patch_size).backward_flops
                    - estimate(models("resnet18", 10), 224, layers, patch_size).backward_flops)
            assert diff == 3 * 512 * 90


@pytest.mark.parametrize("arch", TABLE2_MEMORY)
def test_table2_memory_to_the_printed_digit(models, arch):
    for (patch_size, layers), published in TABLE2_MEMORY[arch].items():
        nbytes = estimate(models(arch), 224, layers, patch_size).activation_bytes
        unit = MB if published >= MB else KB
        assert round(nbytes / unit, 2) == round(published / unit, 2), (patch_size, layers)


@pytest.mark.parametrize("arch", TABLE2_FLOPS)
def test_table2_flops_within_one_percent(models, arch):
    for (patch_size, layers), published in TABLE2_FLOPS[arch].items():
        assert estimate(models(arch), 224, layers, patch_size).backward_flops == pytest.approx(published, rel=0.01)


def test_resnet34_r2_4_layers_table2_cell_is_the_10_class_value(models):
    # Table 2 prints 64.07M, the CIFAR-10 cell of Table 11; with 1000 classes the classifier adds 3*512*990,
    # exactly as it does for ResNet-18 (60.01M -> 61.53M). We report the 1000-class count.
    ours = estimate(models("resnet34"), 224, 4, 2).backward_flops
    assert ours - estimate(models("resnet34", 10), 224, 4, 2).backward_flops == 3 * 512 * 990
    assert ours == pytest.approx(65.61 * M, rel=1e-3)


def test_all_memory_of_mobilenet_and_mcunet_is_our_honest_count(models):
    assert round(estimate(models("mobilenet_v2"), 224, "all").activation_bytes / MB, 2) == 25.81
    assert round(estimate(models("mcunet"), 224, "all").activation_bytes / MB, 2) == 9.89


def test_batch_scales_per_image_terms(models):
    model = models("resnet18", 10)
    one, four = estimate(model, 224, 2, 2), estimate(model, 224, 2, 2, batch_size=4)
    assert four.activation_bytes == 4 * one.activation_bytes
    # per step, not per image: layer4.0.conv2's kernel sums 512*512*8 (counted once instead of 4 times), and
    # the two weight-gradient reductions, 2*4*L - 1 instead of 4*(2L - 1): 3 more additions per weight
    assert four.backward_flops == 4 * one.backward_flops - 3 * 512 * 512 * 8 + 2 * 3 * 512 * 512


def test_explicit_layers_and_segmentation_sized_input():
    model = build_model("resnet18", 10)
    report = estimate(model, (96, 160), ["layer4.1.conv2", "fc"], patch_size=4)
    assert [layer.name for layer in report.layers] == ["layer4.1.conv2", "fc"]
    conv = report.layers[0]
    assert conv.in_shape == (512, 3, 5) and not conv.needs_grad_input
    assert conv.activation_bytes == 512 * 1 * 2 * 4  # ceil(3/4) x ceil(5/4) patches


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(trainable=30), "asked for the last 30 main-path conv layers but the forward pass runs only 17"),
        (dict(trainable=["layer9"]), r"unknown layer\(s\) \['layer9'\]"),
        (dict(trainable=2, patch_size=0), "patch_size must be an int >= 1"),
        (dict(image_size=0), "image size must be >= 1"),
        (dict(trainable=2, batch_size=0), "batch_size must be an int >= 1"),
    ],
)
def test_estimate_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate(build_model("resnet18", 10), **kwargs)


def test_image_too_small():
    with pytest.raises(ValueError, match=r"image size 16x16 is too small for ResNet: layer 'layer4.0.conv1' "
                                         r"\(stride \(2, 2\)\) gets a 1x1 map"):
        estimate(build_model("resnet18", 10), 16)
    assert estimate(build_model("resnet18", 10), 32, 2).layers[0].in_shape == (512, 1, 1)


def test_measure_splits_saved_bytes_by_layer_type():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2),
    )
    batch = torch.randn(2, 3, 16, 16)
    vanilla = measure(model, batch)
    # conv 0 keeps the image for its weight gradient; conv 3's 8x16x16 input is the ReLU's output, which the
    # ReLU saves first: one storage, counted once, under the layer that saved it first
    assert vanilla["conv"] == 2 * 3 * 16 * 16 * 4
    assert vanilla["activation"] == 2 * 8 * 16 * 16 * 4
    assert vanilla["batchnorm"] >= 2 * 8 * 16 * 16 * 4  # BN keeps its input
    install_filters(model, [{"path": "3", "patch_size": 4}])
    filtered = measure(model, batch)
    assert filtered["conv"] == 2 * 3 * 16 * 16 * 4 + 2 * 8 * 4 * 4 * 4  # image + patch sums of conv 3's input
    assert filtered["total"] == sum(v for k, v in filtered.items() if k != "total")


def test_configured_model_costs_like_the_strategy():
    model = build_model("resnet18", 10)
    expected = estimate(model, 224, 3, 4)
    names = [layer.name for layer in expected.layers]
    install_filters(model, [{"path": n, "patch_size": 4, "type": "conv"} for n in names if n != "fc"])
    freeze(model, ["", *(f"~{n}" for n in names)])
    configured = estimate_configured(model, 224)
    assert configured.layers == expected.layers and configured.backward_flops == expected.backward_flops
    assert configured.patch_size == {n: 4 for n in names if n != "fc"}
    with pytest.raises(ValueError, match=r"patch sizes given for \['layer9'\], which are not traced Conv2d"):
        estimate(model, 224, ["fc"], {"layer9": 2})


def test_cli_measures_with_and_without_bn_folded(capsys):
    assert main(["--arch", "resnet18", "--num-classes", "10", "--image-size", "64", "--layers", "2",
                 "--patch-size", "2", "--batch-size", "2", "--measure", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["measured_bytes"]
    assert list(measured) == ["vanilla", "vanilla, BN folded", "per-layer filtered", "per-layer filtered, BN folded",
                              "patch-grid filtered", "patch-grid filtered, BN folded"]
    per_layer, folded = measured["per-layer filtered"], measured["per-layer filtered, BN folded"]
    assert per_layer["batchnorm"] > 0 and folded["batchnorm"] == 0
    assert folded["conv"] == per_layer["conv"] == 2 * 2 * 512 * 1 * 4  # x~: one 2 x 2 patch of each 2 x 2 map
    # the patch grid keeps x~ and the masks (the inner one as one count per patch, the outer one as bits)
    assert measured["patch-grid filtered"] == measured["patch-grid filtered, BN folded"] == {
        "conv": 2 * 2 * 512 * 4, "batchnorm": 0, "activation": 2 * 512 + 2 * 512 * 4 // 8, "linear": 2 * 512 * 4,
        "other": 0, "total": 2 * 2 * 512 * 4 + 2 * 512 + 2 * 512 * 4 // 8 + 2 * 512 * 4}
    assert measured["vanilla"]["activation"] == per_layer["activation"] == 2 * 2 * 512 * 4 * 4  # two ReLU outputs


def test_cli_json_contract(capsys):
    assert main(["--arch", "resnet18", "--num-classes", "10", "--image-size", "224",
                 "--layers", "1", "--patch-size", "7", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backward_flops"] == 303_104
    assert result["activation_bytes"] == 512 * 1 * 4
    assert [layer["name"] for layer in result["layers"]] == ["layer4.1.conv2", "fc"]


def test_cli_table_and_measure(capsys):
    assert main(["--arch", "mcunet", "--image-size", "96", "--layers", "2", "--patch-size", "2",
                 "--measure"]) == 0
    out = capsys.readouterr().out
    assert "| 14.conv.2.0 | conv | 576x3x3 | 160x3x3 | 2 | yes |" in out
    assert "patch-grid backward: 14\n" in out
    for setup in ("vanilla", "per-layer filtered", "patch-grid filtered"):
        assert f"measured saved for backward ({setup}): conv " in out
        assert f"measured saved for backward ({setup}, BN folded): conv " in out


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "the following arguments are required: --arch"),
        (["--arch", "resnet18", "--image-size", "16"], "image size 16x16 is too small for ResNet"),
        (["--arch", "resnet18", "--layers", "30"], "asked for the last 30 main-path conv layers"),
        (["--arch", "vgg"], r"unknown arch 'vgg'; valid archs: \['lenet', 'mcunet', 'mobilenet_v2', 'resnet18', 'resnet20', 'resnet34', 'resnet56'\]"),
        (["--arch", "resnet18", "--layers", "two"], "must be an int >= 0 or 'all'"),
        (["--arch", "resnet18", "--patch-size", "0"], "patch_size must be an int >= 1"),
    ],
)
def test_cli_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
    )


def test_bias_only_layer_keeps_no_input_and_frozen_layers_above_it_cost_their_grad_x():
    model = _tiny()
    freeze(model, ["", "~3.bias"])  # only the middle conv's bias trains
    report = estimate_configured(model, 8)
    by_name = {layer.name: layer for layer in report.layers}
    assert list(by_name) == ["3", "5", "8"]  # conv 0 is below every trainable parameter: not in the backward
    assert (by_name["3"].type, by_name["3"].flops, by_name["3"].activation_bytes) == ("conv-bias", 6 * 64, 0)
    assert not by_name["3"].needs_grad_input
    # frozen layers between the trainable bias and the loss propagate g: grad_x only, nothing kept
    assert (by_name["5"].type, by_name["5"].flops, by_name["5"].activation_bytes) == ("conv-frozen",
                                                                                       2 * 8 * 6 * 64, 0)
    assert (by_name["8"].type, by_name["8"].flops) == ("linear-frozen", 2 * 8 * 5)
    assert report.activation_bytes == 0 and report.trainable_params == 6 and report.uncounted == []


def test_trainable_batchnorm_is_listed_as_uncounted_and_makes_the_convs_above_it_propagate():
    model = _tiny()
    freeze(model, ["", "~1"])  # BN-only training
    report = estimate_configured(model, 8)
    assert report.uncounted == ["1"] and report.trainable_params == 8
    assert [(layer.name, layer.type, layer.needs_grad_input) for layer in report.layers] == [
        ("3", "conv-frozen", True), ("5", "conv-frozen", True), ("8", "linear-frozen", True)]
    install_filters(model, [{"path": "3", "patch_size": 2}])  # a frozen filtered conv: g~y and grad_x~ only
    filtered = {layer.name: layer for layer in estimate_configured(model, 8).layers}["3"]
    patches, hw = 16, 64
    assert filtered.flops == 6 * (hw + patches) + patches * 4 * (2 * 6 - 1) + 6 * 4 * (9 - 1)
    assert filtered.activation_bytes == 0


@pytest.mark.parametrize("arch, size, macs", [("resnet18", 224, 1.814e9), ("mobilenet_v2", 224, 0.3008e9),
                                               ("resnet20", 32, 40.55e6)])
def test_forward_flops_are_twice_the_published_multiply_accumulates(arch, size, macs):
    # torchvision's model cards: ResNet-18 1.81 G, MobileNetV2 0.30 G; He et al.: ResNet-20 about 41 M
    report = estimate(build_model(arch, 1000 if size == 224 else 10), size, "all")
    assert report.forward_flops == pytest.approx(2 * macs, rel=2e-3)


def test_forward_flops_by_hand_and_the_filters_patch_sums():
    # LeNet-5 at 28x28 (3 input channels): conv 2*6*3*25*28*28 + conv 2*16*6*25*10*10 + linear 2*(400*120 + 120*84 + 84*10)
    expected = 705_600 + 480_000 + 2 * (400 * 120 + 120 * 84 + 84 * 10)
    assert estimate(build_model("lenet", 10), 28, "all", batch_size=3).forward_flops == 3 * expected
    filtered = estimate(build_model("lenet", 10), 28, "all", patch_size=2)
    assert filtered.forward_flops == expected + 3 * 28 * 28 + 6 * 14 * 14  # x~ of both trained convs
