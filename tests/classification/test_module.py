"""The LightningModule's set-up rules, weights handling and schedule, without training."""

from urllib.error import URLError

import pytest
import torch
from torch import nn

from classification.module import ClassificationModule, _WarmupCosine
from gradfilt import FilteredConv2d, GradientFilter, Vanilla


def test_default_method_is_vanilla_on_every_layer():
    module = ClassificationModule(arch="resnet18", num_classes=5, image_size=32)
    assert module.method.tag == "vanilla-all" and all(p.requires_grad for p in module.parameters())
    assert module.hparams.method == {"class_path": "gradfilt.methods.vanilla.Vanilla",
                                     "init_args": {"layers": None, "freeze": None, "update_frozen_bn_stats": False}}


def test_zero_layers_trains_only_the_classifier():
    module = ClassificationModule(arch="mobilenet_v2", num_classes=5, image_size=32, method=Vanilla(layers=0))
    assert {n for n, p in module.model.named_parameters() if p.requires_grad} == {"classifier.1.weight",
                                                                                  "classifier.1.bias"}
    assert [layer.name for layer in module.cost.layers] == ["classifier.1"]
    assert module.cost.backward_flops == 3 * 1280 * 5


def test_filters_on_mcunet_last_layers_and_bn_eval():
    module = ClassificationModule(arch="mcunet", num_classes=10, image_size=64, method=GradientFilter(2, 4),
                                  bn_eval=True)
    filtered = [n for n, m in module.model.named_modules() if isinstance(m, FilteredConv2d)]
    assert filtered == ["14.conv.1.0", "14.conv.2.0"]  # depthwise 3x3 and the projection 1x1
    module.train()(torch.randn(2, 3, 64, 64))
    assert all(not m.training for m in module.modules() if isinstance(m, nn.BatchNorm2d))
    assert module.model[14].conv[2][0].training


def test_imagenet_weights_fail_clearly_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"could not fetch ImageNet weights for resnet18 from https://.*"
                                           r"\(<urlopen error no network>\). Without network, put the file in"):
        ClassificationModule(arch="resnet18", num_classes=10, image_size=32, weights="imagenet")
    with pytest.raises(ValueError, match="weights: imagenet is available for mobilenet_v2, resnet18, resnet34 and timm/<name>"):
        ClassificationModule(arch="mcunet", num_classes=10, image_size=32, weights="imagenet")


def test_imagenet_weights_loaded_and_head_replaced(monkeypatch):
    from torchvision.models import resnet18

    reference = resnet18()
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url",
                        lambda *a, **k: reference.state_dict())
    module = ClassificationModule(arch="resnet18", num_classes=7, image_size=32, weights="imagenet")
    assert torch.equal(module.model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert module.model.fc.out_features == 7


def test_init_from_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.init_from: no checkpoint at"):
        ClassificationModule(arch="resnet18", image_size=32, init_from=str(tmp_path / "none.ckpt"))
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="holds no 'model.\\*' weights"):
        ClassificationModule(arch="resnet18", image_size=32, init_from=str(tmp_path / "foreign.ckpt"))
    small = ClassificationModule(arch="resnet18", num_classes=3, image_size=32)
    torch.save({"state_dict": small.state_dict()}, tmp_path / "three.ckpt")
    with pytest.raises(ValueError, match="(?s)does not fit this network: .*size mismatch for fc.weight"):
        ClassificationModule(arch="resnet18", num_classes=10, image_size=32, init_from=str(tmp_path / "three.ckpt"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(warmup_epochs=-1), "warmup_epochs must be >= 0"),
    (dict(method={"class_path": "GradientFilter", "init_args": {"filter_install": [
        {"path": "layer4", "patch_size": 2, "kind": "all"}]}}), r"unknown key\(s\) \['kind'\]"),
    (dict(method={"class_path": "Sparse"}), r"unknown method 'Sparse'; valid methods: \[.*'gradient_filter', .*'vanilla'"),
])
def test_setup_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassificationModule(arch="resnet18", image_size=32, **kwargs)


def test_warmup_then_cosine():
    f = _WarmupCosine(warmup=4, total=12, cosine=True)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)
    assert _WarmupCosine(0, 10, cosine=False)(7) == 1.0


def test_timm_arch_through_the_module():
    module = ClassificationModule(arch="timm/resnet10t", num_classes=4, image_size=32, method=GradientFilter(2, 2))
    assert module.method.trained_convs == ["layer4.0.conv1", "layer4.0.conv2"]
    assert module.cost.backward_flops > 0 and module(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_measuring_a_step_leaves_the_random_stream_alone():
    """The measured-bytes step runs dropout; the run's own random stream must not move."""
    module = ClassificationModule(arch="mobilenet_v2", num_classes=10, image_size=32)
    state = torch.random.get_rng_state()
    nbytes = module.measured_bytes()
    assert nbytes > 0 and torch.equal(torch.random.get_rng_state(), state)
    assert all(p.grad is None for p in module.parameters())  # measured on a copy
