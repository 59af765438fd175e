"""The Method type: registry, set-up of vanilla and gradient filtering, all-or-nothing, tags, cost."""

import pytest
import torch
from torch import nn

from gradfilt import FilteredConv2d, classifier_name
from gradfilt.methods import estimate
from gradfilt.surgery.freeze import keep_bn_eval
from gradfilt.methods import METHODS, GradientFilter, Method, Vanilla, build_method, method_class, register_method
from gradfilt.models import build_model

X64 = torch.zeros(1, 3, 64, 64)


def _state(model):
    return {n: (type(m), tuple(p.requires_grad for p in m.parameters(recurse=False)))
            for n, m in model.named_modules()}


def test_registry_names_classes_and_paths():
    assert METHODS["vanilla"] is Vanilla and METHODS["gradient_filter"] is GradientFilter
    assert method_class("GradientFilter") is GradientFilter
    assert method_class("gradfilt.methods.Vanilla") is Vanilla
    with pytest.raises(ValueError, match=r"unknown method 'sparse'; valid methods: \[('\w+', )*'vanilla'"):
        method_class("sparse")
    with pytest.raises(ValueError, match="already registered"):
        register_method("vanilla")(type("Other", (Method,), {}))


def test_build_method_from_configs():
    assert build_method({"type": "gradient_filter", "layers": 2, "patch_size": 4}).tag == "R4-2L"
    assert build_method({"class_path": "gradfilt.methods.Vanilla", "init_args": {"layers": 3}}).tag == "vanilla-3L"
    assert build_method("vanilla").tag == "vanilla-all"
    with pytest.raises(ValueError, match=r"method 'vanilla': .*'patch_size'.*valid arguments: \['layers', 'freeze', 'update_frozen_bn_stats'\]"):
        build_method({"type": "vanilla", "patch_size": 2})
    with pytest.raises(ValueError, match="names no method"):
        build_method({"layers": 2})


def test_last_two_layers_of_resnet18_with_filters():
    model = build_model("resnet18", 10)
    method = GradientFilter(layers=2, patch_size=4)
    method.apply(model, X64)
    assert method.trained_convs == ["layer4.1.conv1", "layer4.1.conv2"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "layer4.1.conv1.weight", "layer4.1.conv2.weight", "fc.weight", "fc.bias"}
    assert [n for n, m in model.named_modules() if isinstance(m, FilteredConv2d)] == method.trained_convs
    assert model.get_submodule("layer4.1.conv2").patch_size == 4
    bn = model.get_submodule("layer4.1.bn2")
    before = bn.running_mean.clone()
    model.train()(torch.randn(2, 3, 64, 64))
    assert torch.equal(bn.running_mean, before)  # frozen BN stays in eval mode: statistics do not move


def test_vanilla_all_trains_everything_and_gradient_filter_all_filters_every_conv():
    model = build_model("mcunet", 10)
    Vanilla().apply(model, X64)
    assert all(p.requires_grad for p in model.parameters())
    model = build_model("mcunet", 10)  # one method per model
    method = GradientFilter(layers="all", patch_size=2)
    method.apply(model, X64)
    assert sum(isinstance(m, FilteredConv2d) for m in model.modules()) == len(method.filtered_convs) == sum(
        isinstance(m, nn.Conv2d) for m in model.modules()) == len(method.trained_convs)


def test_parameters_are_kept_so_an_earlier_optimizer_trains_them():
    model = build_model("resnet18", 10)
    weight = model.layer4[1].conv2.weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    GradientFilter(layers=1, patch_size=2).apply(model, X64)
    assert model.layer4[1].conv2.weight is weight
    nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2])).backward()
    before = weight.detach().clone()
    opt.step()
    assert not torch.equal(weight, before)


def test_explicit_lists_and_bn_options():
    model = build_model("resnet18", 10)
    method = GradientFilter(filter_install=[{"path": "layer4.1", "patch_size": 2, "type": "basic_block"}],
                            freeze=["", "~layer4.1", "~fc"])
    method.apply(model, X64)
    assert method.tag.startswith("R2-custom-") and method.fields()["layers"] == "custom"
    assert sorted(n for n, m in model.named_modules() if isinstance(m, FilteredConv2d)) == [
        "layer4.1.conv1", "layer4.1.conv2"] == method.filtered_convs == method.trained_convs
    trainable_bn = model.layer4[1].bn1
    assert trainable_bn.weight.requires_grad
    keep_bn_eval(model)
    before = trainable_bn.running_mean.clone()
    model.train()(torch.randn(2, 3, 64, 64))
    assert torch.equal(trainable_bn.running_mean, before)  # keep_bn_eval: statistics fixed, trainable BN included
    calibrate = build_model("resnet18", 10)
    Vanilla(freeze=["", "~fc"], update_frozen_bn_stats=True).apply(calibrate, X64)
    frozen_bn = calibrate.layer1[0].bn1
    assert not frozen_bn.weight.requires_grad
    before = frozen_bn.running_mean.clone()
    calibrate.train()(torch.randn(2, 3, 64, 64))
    assert not torch.equal(frozen_bn.running_mean, before)  # calibration: frozen BN statistics move


def test_two_explicit_configs_get_different_tags():
    a = GradientFilter(filter_install=[{"path": "layer4.1", "patch_size": 2}])
    b = GradientFilter(filter_install=[{"path": "layer4.0", "patch_size": 2}])
    assert a.tag != b.tag and a.tag == GradientFilter(filter_install=[{"path": "layer4.1", "patch_size": 2}]).tag
    assert Vanilla(freeze=["", "~fc"]).tag != Vanilla(freeze=["", "~layer4"]).tag


@pytest.mark.parametrize("method, error, message", [
    (lambda: GradientFilter(layers=2), ValueError, "either patch_size .* or an explicit filter_install list"),
    (lambda: GradientFilter(layers=2, patch_size=0), ValueError, "patch_size must be an int >= 1"),
    (lambda: Vanilla(layers=-1), ValueError, r"layers must be an int >= 0"),
    (lambda: Vanilla(layers=2, freeze=[""]), ValueError, "either layers .* or an explicit freeze list"),
    (lambda: GradientFilter(filter_install=[{"path": "fc", "patch_size": 2, "kind": "x"}]), ValueError,
     r"unknown key\(s\) \['kind'\]"),
    (lambda: GradientFilter(filter_install=[{"path": "fc", "patch_size": 2, "type": "nope"}]), ValueError,
     "unknown filter type 'nope'; valid types"),
])
def test_config_errors_before_any_model(method, error, message):
    with pytest.raises(error, match=message):
        method()


@pytest.mark.parametrize("method, error, message", [
    (GradientFilter(layers=40, patch_size=2), ValueError, "asked for the last 40 main-path conv layers"),
    (GradientFilter(filter_install=[{"path": "layer4.1", "patch_size": 2}, {"path": "layer9", "patch_size": 2}]),
     KeyError, "layer9"),
    (GradientFilter(filter_install=[{"path": "layer4.1", "patch_size": 2}], freeze=["", "~layer9"]), KeyError,
     "layer9"),
    (Vanilla(freeze=["", "~fc", "~fc.nope"]), KeyError, "fc.nope"),
])
def test_a_bad_config_leaves_the_model_untouched(method, error, message):
    model = build_model("resnet18", 10)
    before = _state(model)
    with pytest.raises(error, match=message):
        method.apply(model, X64)
    assert _state(model) == before


@pytest.mark.parametrize("layers, patch_size", [(2, None), (4, 2), ("all", None), (1, 7)])
def test_method_cost_is_the_paper_cost(layers, patch_size):
    model = build_model("resnet18", 10)
    expected = estimate(model, 224, layers, patch_size)
    method = Vanilla(layers=layers) if patch_size is None else GradientFilter(layers, patch_size)
    method.apply(model, torch.zeros(1, 3, 224, 224))
    report = method.cost(model, 224)
    assert (report.backward_flops, report.activation_bytes) == (expected.backward_flops, expected.activation_bytes)
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_tags_and_fields():
    assert Vanilla(layers="all").tag == "vanilla-all" and Vanilla(layers=2).tag == "vanilla-2L"
    assert GradientFilter(4, 7).tag == "R7-4L"
    assert GradientFilter(2, 4).fields() == {"method": "R4-2L", "layers": 2, "patch_size": 4}
    assert Vanilla(layers=2).fields() == {"method": "vanilla-2L", "layers": 2, "patch_size": "-"}


def test_default_hooks_do_nothing():
    method = Vanilla(layers=1)
    x = torch.zeros(2, 3, 8, 8)
    assert method.select_samples(nn.Identity(), x, torch.zeros(2), 0) is None
    assert method.before_backward(nn.Identity(), torch.zeros(()), 0) is None
    assert method.after_backward(nn.Identity(), 0) is None


def test_classifier_is_the_last_linear_run():
    assert classifier_name(build_model("mobilenet_v2", 10), input_size=(1, 3, 32, 32)) == "classifier.1"
    with pytest.raises(ValueError, match="runs no nn.Linear classifier"):
        classifier_name(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("second", [{"type": "emp", "layers": 2}, {"type": "vanilla", "layers": "all"},
                                    {"type": "gradient_filter", "layers": 2, "patch_size": 2}])
def test_a_model_that_carries_a_method_is_refused(second):
    model = build_model("resnet18", 10)
    GradientFilter(layers=2, patch_size=2).apply(model, X64)
    state = {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)]) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match=r"the model already carries a training method \(GradientFilter R2-2L\)"):
        build_method(second).apply(model, X64)
    assert state == {n: (type(m), [p.requires_grad for p in m.parameters(recurse=False)])
                     for n, m in model.named_modules()}


def test_a_method_wrapping_another_applies_once():
    from gradfilt.methods import EarlyInstanceFilter

    model = build_model("resnet20", 10)
    method = EarlyInstanceFilter(method={"type": "emp", "layers": 2})
    method.apply(model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"carries a training method \(EarlyInstanceFilter eif0.3-emp0.5-2L\)"):
        Vanilla().apply(model, torch.zeros(1, 3, 32, 32))
