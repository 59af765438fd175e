"""Dynamic sparse update: moving channels against the dense conv, optimizer state, coverage, the budget."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradfilt.cost import estimate_configured, measure
from gradfilt.methods import DynamicSparseUpdate, build_method
from gradfilt.methods.dynamic_sparse import parse_bytes
from gradfilt.ops.sparse import SparseConv2d
from gradfilt.surgery.trace import trace_layers
from helpers.training import fused

SIZE = 32


def _batches(n=2, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


def _convs(model):
    return [c.name for c in trace_layers(model, torch.zeros(1, 3, SIZE, SIZE)) if isinstance(c.module, nn.Conv2d)]


def _set_up(arch="mobilenet_v2", dtype=torch.float32, model=None, **kwargs):
    model = fused(arch).to(dtype) if model is None else model
    method = DynamicSparseUpdate(**kwargs)
    if method.calibration_batches:
        method.calibrate(model, [(x.to(dtype), y) for x, y in _batches()])
    method.apply(model, torch.zeros(1, 3, SIZE, SIZE, dtype=dtype))
    return model, method


def _merged(model):
    return {n: m.merged_weight().clone() for n, m in model.named_modules() if isinstance(m, SparseConv2d)}


def _train(model, method, steps, momentum=0.9, weight_decay=5e-4, check=None):
    """SGD steps through the method's hooks on random batches; ``check(step, before, after)`` after each."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    for step in range(steps):
        method.start_step(model, opt, step)
        before = _merged(model)
        opt.zero_grad()
        x, y = _batches(1, seed=100 + step)[0]
        F.cross_entropy(model(x.to(params[0].dtype)), y).backward()
        method.after_backward(model, step)
        opt.step()
        if check is not None:
            check(step, before, _merged(model))
    return opt


def test_select_moves_the_trained_channels_and_keeps_the_weight():
    conv = nn.Conv2d(6, 4, 3, padding=1).double()
    dense = conv.weight.detach().clone()
    sparse = SparseConv2d.from_conv(conv, [0, 2])
    with torch.no_grad():
        sparse.weight_update.add_(1.0)  # trained values, not yet in ``weight``
    expected = dense.clone()
    expected[:, [0, 2]] += 1.0
    update = sparse.weight_update
    sparse.select([5, 1])
    assert sparse.weight_update is update  # the same Parameter: an optimizer built earlier keeps it
    assert sparse.channels.tolist() == [1, 5]
    assert torch.equal(sparse.merged_weight(), expected) and torch.equal(sparse.weight_update, expected[:, [1, 5]])
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    y = sparse(x)
    reference = nn.Conv2d(6, 4, 3, padding=1).double()
    with torch.no_grad():
        reference.weight.copy_(expected)
        reference.bias.copy_(conv.bias)
    g = torch.randn_like(y)
    (gw,) = torch.autograd.grad(reference(x), [reference.weight], g)
    (gu,) = torch.autograd.grad(y, [sparse.weight_update], g)
    torch.testing.assert_close(gu, gw[:, [1, 5]], rtol=0, atol=1e-12)
    for bad in ([1], [1, 1], [0, 6]):
        with pytest.raises(ValueError, match=r"select\(\) takes 2 distinct channels in \[0, 6\)"):
            sparse.select(bad)


@pytest.mark.parametrize("policy", ["rotation", "importance"])
def test_trained_channels_get_the_dense_gradient_every_step(policy):
    model = fused("mobilenet_v2").double()
    reference = copy.deepcopy(model)
    model, method = _set_up(dtype=torch.float64, model=model, memory_budget=None, update_ratio=0.02, policy=policy,
                            manual_weight_idx=[40, 48, 49, 50, 51])
    for step in range(3):
        method.start_step(model, None, step)
        with torch.no_grad():  # the reference holds the current weights, every conv trainable
            for name, weight in _merged(model).items():
                reference.get_submodule(name).weight.copy_(weight)
        x, y = _batches(1, seed=step)[0]
        F.cross_entropy(model(x.double()), y).backward()
        F.cross_entropy(reference(x.double()), y).backward()
        for p in method.plan_:
            conv = model.get_submodule(p["name"])
            dim = 0 if conv.groups > 1 else 1
            dense = reference.get_submodule(p["name"]).weight.grad.index_select(dim, conv.channels)
            scale = float(dense.abs().max())  # float64: equal up to the summation order of the backward
            torch.testing.assert_close(conv.weight_update.grad, dense, rtol=0, atol=1e-12 * scale)
            bias = reference.get_submodule(p["name"]).bias.grad
            torch.testing.assert_close(conv.bias.grad, bias, rtol=0, atol=1e-12 * float(bias.abs().max()))
            conv.weight_update.grad = conv.bias.grad = None
        reference.zero_grad()


@pytest.mark.parametrize("policy", ["rotation", "importance"])
def test_untrained_channels_and_frozen_parameters_stay_bit_identical(policy):
    model, method = _set_up(memory_budget="256KB", update_ratio=0.02, policy=policy)
    chosen = {f"{p['name']}.weight" for p in method.plan_}  # checked per channel above
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()
                     if not p.requires_grad and n not in chosen}
    assert len(frozen_before) > 50
    moved = []

    def check(step, before, after):
        for p in method.plan_:
            conv = model.get_submodule(p["name"])
            dim = 0 if conv.groups > 1 else 1
            off = torch.ones(conv.weight.shape[dim], dtype=torch.bool)
            off[conv.channels] = False
            old, new = before[p["name"]].transpose(0, dim), after[p["name"]].transpose(0, dim)
            assert torch.equal(old[off], new[off])  # momentum and weight decay never reach them
            moved.append(not torch.equal(old[~off], new[~off]))

    _train(model, method, 4, check=check)
    assert all(moved)
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name


def test_channels_change_every_step_and_rotation_covers_every_channel_in_its_period():
    model, method = _set_up(memory_budget=None, update_ratio=0.01, policy="rotation", manual_weight_idx=[47, 49, 51])
    periods = method.rotation_period()
    assert periods == {p["name"]: math.ceil(p["of"] / p["channels"]) for p in method.plan_}
    seen = {p["name"]: [] for p in method.plan_}
    plan = {p["name"]: p for p in method.plan_}
    assert model.get_submodule("features.17.conv.1.0").groups > 1  # conv 47: depthwise, output channels

    def check(step, before, after):
        for name in seen:
            seen[name].append(model.get_submodule(name).channels.tolist())

    _train(model, method, max(periods.values()), check=check)
    assert method.metrics() == {"Coverage": 1.0}
    for name, chosen in seen.items():
        assert all(a != b for a, b in zip(chosen, chosen[1:]))  # a new selection every step
        assert set().union(*chosen[:periods[name]]) == set(range(plan[name]["of"]))


def test_importance_sampling_visits_every_channel_within_its_floor_period():
    model, method = _set_up(memory_budget=None, update_ratio=0.01, policy="importance", manual_weight_idx=[49, 51],
                            floor=0.5)
    periods = method.rotation_period()
    plan = {p["name"]: p for p in method.plan_}
    assert periods == {n: math.ceil(p["of"] / math.ceil(0.5 * p["channels"])) for n, p in plan.items()}
    _train(model, method, max(periods.values()))
    assert method.coverage() == {name: 1.0 for name in plan}
    # the sampled slots follow the scores: a channel scored far above the rest is drawn every step
    scores = method._state["features.18.0"]["scores"]
    scores.fill_(1.0)
    scores[5] = 1e9
    conv = model.get_submodule("features.18.0")
    drawn = 0
    for step in range(100, 130):
        method.start_step(model, None, step)
        drawn += 5 in conv.channels.tolist()
    assert drawn == 30


def test_momentum_of_a_channel_is_parked_while_it_rests_and_resumes():
    model = fused("mobilenet_v2")
    last = model.get_submodule(_convs(model)[-1])
    all_weights = sum(model.get_submodule(n).weight.numel() for n in _convs(model))
    # half of the last conv's channels per step: windows A, B, A, B, ...
    method = DynamicSparseUpdate(memory_budget=None, update_ratio=0.5 * last.weight.numel() / all_weights,
                                 manual_weight_idx=[51])
    method.apply(model, torch.zeros(1, 3, SIZE, SIZE))
    assert method.rotation_period() == {"features.18.0": 2}
    conv = model.get_submodule("features.18.0")
    opt = _train(model, method, 1)  # step 0 on window A
    window_a = conv.channels.clone()
    buffer = opt.state[conv.weight_update]["momentum_buffer"]
    momentum_a = buffer.clone()
    method.start_step(model, opt, 1)  # window B: A's momentum is parked, B's starts at zero
    assert not set(conv.channels.tolist()) & set(window_a.tolist())
    assert torch.equal(buffer, torch.zeros_like(buffer))
    x, y = _batches(1, seed=7)[0]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    momentum_b = buffer.clone()
    method.start_step(model, opt, 2)  # window A again: its momentum resumes where it was left
    assert torch.equal(conv.channels, window_a) and torch.equal(buffer, momentum_a)
    assert torch.equal(method._state["features.18.0"]["parked"]["momentum_buffer"].index_select(
        1, torch.tensor(sorted(set(range(320)) - set(window_a.tolist())))), momentum_b)


def test_a_resumed_run_restarts_the_optimizer_state():
    model, method = _set_up(memory_budget=None, update_ratio=0.005, policy="rotation", manual_weight_idx=[51])
    conv = model.get_submodule(method.plan_[0]["name"])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    opt.state[conv.weight_update]["momentum_buffer"] = torch.ones_like(conv.weight_update)  # as loaded
    with pytest.warns(UserWarning, match="dynamic sparse update resumed at step 7: the optimizer state .* restarts"):
        method.start_step(model, opt, 7)  # the first step this process takes is not step 0
    assert torch.equal(opt.state[conv.weight_update]["momentum_buffer"], torch.zeros_like(conv.weight_update))
    assert method.memory()["weights"] == conv.channels.numel() * conv.weight.shape[0]


@pytest.mark.parametrize("arch, budget", [("mobilenet_v2", "224KB"), ("mobilenet_v2", "256KB"),
                                          ("resnet18", "1MB")])
def test_budget_holds_measured_and_the_memory_model_is_what_autograd_keeps(arch, budget):
    model, method = _set_up(arch, memory_budget=budget, update_ratio=0.02)
    memory = method.memory()
    assert memory["step"] <= parse_bytes(budget)
    model.train()
    for step in range(2):
        method.start_step(model, None, step)
        model.zero_grad(set_to_none=True)
        x = torch.randn(1, 3, SIZE, SIZE)
        kept = measure(model, x)["conv"]
        F.cross_entropy(model(x), torch.tensor([3])).backward()
        grads = sum(p.grad.numel() * 4 for p in model.parameters() if p.grad is not None)
        assert kept == memory["activation"] and grads == memory["gradient"]
        assert kept + grads <= parse_bytes(budget)
    report = estimate_configured(model, SIZE)
    assert report.activation_bytes == memory["activation"]
    assert memory["weights"] <= 0.02 * memory["all_weights"] * 1.05 + len(method.plan_)
    assert memory["dense_activation"] >= memory["activation"] and memory["dense_step"] >= memory["step"]


def test_a_larger_budget_chooses_more_layers():
    counts = [len(_set_up(memory_budget=b, update_ratio=0.02)[1].plan_) for b in ("224KB", "256KB", "1MB")]
    assert counts[0] < counts[1] < counts[2]


def test_layers_are_chosen_by_calibrated_importance_among_the_candidates():
    model = fused("mobilenet_v2")
    types = {n: type(m) for n, m in model.named_modules()}
    method = DynamicSparseUpdate(memory_budget=None, candidates=6, update_ratio=0.02)
    method.calibrate(model, _batches())
    convs = _convs(model)
    assert set(method.importance_) == set(convs[-6:])  # MobileNetV2's convs are dense or depthwise
    # the importance is the mean squared weight gradient per weight, on dense gradients
    name = convs[-1]
    reference = copy.deepcopy(model)
    total = 0.0
    for x, y in _batches():
        reference.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        total += float(reference.get_submodule(name).weight.grad.double().pow(2).mean())
    assert method.importance_[name] == pytest.approx(total / 2, rel=1e-5)
    assert types == {n: type(m) for n, m in model.named_modules()}  # calibrate changed nothing
    assert not any(p.grad is not None for p in model.parameters())
    method.apply(model, torch.zeros(1, 3, SIZE, SIZE))
    assert {p["name"] for p in method.plan_} == set(method.importance_)  # no budget: every candidate


def test_frozen_convs_between_chosen_layers_keep_nothing():
    model, method = _set_up(memory_budget=None, update_ratio=0.02, manual_weight_idx=[40, 51])
    lean = set(method.lean_)
    convs = _convs(model)
    assert lean == {n for n in convs[41:51]}
    assert all(isinstance(model.get_submodule(n), SparseConv2d) and not model.get_submodule(n).channels.numel()
               for n in lean)
    assert not any(p.requires_grad for n in lean for p in model.get_submodule(n).parameters())


def test_state_dict_is_the_plain_network():
    model, method = _set_up(memory_budget=None, update_ratio=0.02, manual_weight_idx=[49, 51])
    _train(model, method, 2)
    plain = fused("mobilenet_v2")
    plain.load_state_dict(model.state_dict())  # merged weights under the plain names
    x = torch.randn(2, 3, SIZE, SIZE)
    model.eval()
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=1e-5)


def _state(model):
    return {n: (type(m), tuple(p.requires_grad for p in m.parameters(recurse=False)))
            for n, m in model.named_modules()}


@pytest.mark.parametrize("kwargs, calibrate, message", [
    ({"memory_budget": "1KB"}, True, r"update_ratio 0.02 trains 43,795 conv weights per step, whose gradients .* "
                                     r"need 221.1 KB, over memory_budget 1.0 KB"),
    ({"memory_budget": "8KB", "manual_weight_idx": [51]}, False, r"manual_weight_idx \[51\] need .* KB per step .* over memory_budget 8.0"),
    ({"manual_weight_idx": [99]}, False, r"manual_weight_idx \[99\] out of range: the forward pass runs 52 convs"),
    ({}, False, r"call calibrate\(model, batches\) before apply\(\)"),
    ({"candidates": 99}, True, r"candidates=99 but the forward pass runs only 52 convs"),
])
def test_errors_leave_the_model_untouched(kwargs, calibrate, message):
    model = fused("mobilenet_v2")
    before = _state(model)
    method = DynamicSparseUpdate(**kwargs)
    with pytest.raises(ValueError, match=message):
        if calibrate:
            method.calibrate(model, _batches(1))
        method.apply(model, torch.zeros(1, 3, SIZE, SIZE))
    assert _state(model) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"update_ratio": 0.0}, r"update_ratio must be a fraction of the conv weights in \(0, 1\]"),
    ({"update_ratio": 1.5}, r"update_ratio must be"),
    ({"policy": "greedy"}, r"unknown policy 'greedy'; valid: \['rotation', 'importance'\]"),
    ({"memory_budget": "lots"}, r"memory size 'lots' is not a byte count"),
    ({"calibration_batches": 0}, r"with calibration_batches 0 the layers cannot be chosen"),
    ({"manual_weight_idx": [3, 3]}, r"manual_weight_idx lists a conv twice"),
    ({"floor": 0.0}, r"floor must be in \(0, 1\]"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicSparseUpdate(**kwargs)


def test_bytes_tag_and_registry():
    assert parse_bytes("256KB") == 262144 and parse_bytes("1.5MB") == 1572864 and parse_bytes(100) == 100
    method = build_method({"type": "dynamic_sparse", "memory_budget": "128KB", "policy": "importance"})
    assert method.tag == "dyn-importance-u0.02-128KB" and method.calibration_batches == 4
    listed = DynamicSparseUpdate(manual_weight_idx=[50, 51])
    assert listed.calibration_batches == 0 and listed.tag.startswith("dyn-rotation-u0.02-256KB-custom-")
