"""The budgeted configuration search: exact cost tables, the optimizer against enumeration, budgets,
the latency fit, the gradient-fidelity proxy and the method configs it emits."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from gradfilt import search as gs
from gradfilt.search.latency_model import conv_call
from gradfilt.search.solvers import _checked
from gradfilt.cost import estimate_configured
from gradfilt.surgery.fuse import fuse_bn
from gradfilt import FilteredConv2d
from gradfilt.methods import build_method
from gradfilt.models import build_model


def _folded(arch, size):
    torch.manual_seed(0)
    model = build_model(arch, 10)
    fuse_bn(model, torch.randn(2, 3, size, size))
    return model.eval()


def _configured(model, space, config, size):
    method = build_method(gs.method_config(space, config))
    configured = copy.deepcopy(model)
    method.apply(configured, torch.zeros(1, 3, size, size))
    return method, configured


@pytest.fixture(scope="module")
def resnet():
    model = _folded("resnet18", 64)
    space = gs.search_space(model, torch.zeros(1, 3, 64, 64), 6, (2, 4))
    return model, space, gs.cost_tables(model, space, 64)


@pytest.mark.parametrize("arch,last,size", [("resnet18", 6, 64), ("mobilenet_v2", 5, 64)])
def test_cost_tables_equal_the_cost_model_of_the_configured_network(arch, last, size):
    model = _folded(arch, size)
    space = gs.search_space(model, torch.zeros(1, 3, size, size), last, (2, 4))
    tables = gs.cost_tables(model, space, size, batch_size=2)
    configs = gs.sample_configs(space, 12, seed=1) + [(0,) * last, (1,) * last, (3,) * last]
    costs = tables.evaluate(configs)
    for j, config in enumerate(configs):
        method, configured = _configured(model, space, config, size)
        report = estimate_configured(configured, size, batch_size=2)
        assert costs["backward_flops"][j] == report.backward_flops, space.label(config)
        assert costs["activation_bytes"][j] == report.activation_bytes, space.label(config)
        filtered = {n for n, m in configured.named_modules() if isinstance(m, FilteredConv2d)}
        assert filtered == {n for n, c in zip(space.layers, config) if c >= 2}


def test_paper_configurations_become_their_tags(resnet):
    model, space, tables = resnet
    for tag in ("vanilla-2L", "R2-2L", "R4-6L", "vanilla-1L"):
        config = gs.config_from_tag(space, tag)
        assert gs.method_tag(space, config) == tag
        assert gs.config_from_tag(space, space.label(config)) == config
    assert gs.config_from_tag(space, "R7-2L") is None  # 7 is not in this space
    assert gs.config_from_tag(space, "vanilla-9L") is None
    assert space.label(gs.config_from_tag(space, "R4-2L")) == "____44"
    # a trained layer before frozen ones is not the paper's "last N": it needs an explicit freeze list
    first = gs.method_config(space, (1, 1, 1, 0, 0, 0))["init_args"]["freeze"]
    assert first == ["", *(f"~{n}" for n in space.layers[:3]), "~fc"]
    assert gs.method_config(space, (0, 0, 0, 0, 2, 2)) == {"class_path": "GradientFilter",
                                                          "init_args": {"layers": 2, "patch_size": 2}}
    with pytest.raises(ValueError, match="not a configuration label"):
        space.parse("__x_44")


def _synthetic(k, n_patch, seed):
    """Random tables with the structure of real ones: costs grow with the choice's fineness, a frozen
    layer costs only its input gradient when an earlier layer trains."""
    rng = np.random.default_rng(seed)
    space = gs.SearchSpace(tuple(f"l{i}" for i in range(k)), tuple(range(2, 2 + n_patch)), "fc")
    n = space.n_choices
    own, rest = {}, {}
    for metric in ("activation_bytes", "backward_flops"):
        table = np.zeros((k, n, k + 1))
        for i in range(k):
            per_choice = np.sort(rng.uniform(1, 100, n - 1))[::-1]  # vanilla most expensive
            for e in range(k + 1):
                table[i, 1:, e] = per_choice + (rng.uniform(0, 20) if e < i else 0)
                table[i, 0, e] = rng.uniform(0, 10) if e < i and metric == "backward_flops" else 0
        own[metric], rest[metric] = table, rng.uniform(0, 5, k + 1)
    tables = gs.CostTables(space, own, rest)
    fidelity = np.concatenate([np.zeros((k, 1)), np.ones((k, 1)), np.sort(rng.uniform(0.2, 1, (k, n_patch)))[:, ::-1]],
                              1)
    predictor = gs.AccuracyPredictor(fidelity, np.array([0.5, rng.uniform(0.5, 2), rng.uniform(-0.5, 0.5)]))
    return tables, predictor


@pytest.mark.parametrize("seed", range(10))
def test_shgo_finds_the_enumerated_optimum(seed):
    k = 7 if seed >= 8 else 3 + seed % 3  # the last two: 5^7 = 78,125 configurations
    tables, predictor = _synthetic(k=k, n_patch=2 + seed % 2, seed=seed)
    everything = tables.evaluate(tables.space.all_configs())
    for quantile in (0.1, 0.4, 0.8):
        budgets = {"activation_bytes": float(np.quantile(everything["activation_bytes"], quantile))}
        if seed % 2:
            budgets["backward_flops"] = float(np.quantile(everything["backward_flops"], 1 - quantile / 2))
        found = gs.search(tables, predictor, budgets)
        assert found.predicted == pytest.approx(found.exhaustive["predicted"], abs=1e-9)
        assert found.label == found.exhaustive["label"]


def test_budgets_are_never_exceeded_by_the_exact_costs(resnet):
    model, space, tables = resnet
    predictor = gs.AccuracyPredictor(np.tile([0.0, 1.0, 0.9, 0.8], (len(space.layers), 1)))
    for budget in (2048, 9000, 20000, 50000):
        for flops in (None, 30e6):
            budgets = {"activation_bytes": budget} | ({} if flops is None else {"backward_flops": flops})
            found = gs.search(tables, predictor, budgets)
            _, configured = _configured(model, space, found.config, 64)
            report = estimate_configured(configured, 64)
            assert report.activation_bytes == found.costs["activation_bytes"] <= budget
            assert flops is None or report.backward_flops == found.costs["backward_flops"] <= flops
            assert found.label == found.exhaustive["label"]
    cheapest = tables.evaluate(np.zeros((1, len(space.layers)), dtype=int))["backward_flops"][0]
    with pytest.raises(ValueError, match="no configuration fits"):
        gs.search(tables, predictor, {"backward_flops": cheapest / 2})
    with pytest.raises(ValueError, match="latency"):
        gs.search(tables, predictor, {"latency_ms": 1.0})


def test_proxy_is_highest_for_the_exact_gradient(resnet):
    model, _, _ = resnet
    # the last 3 convs have stride 1: the filtered op with 1x1 patches gives their exact weight gradient
    space = gs.search_space(model, torch.zeros(1, 3, 64, 64), 3, (1, 2, 4))
    torch.manual_seed(0)
    batches = [(torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))) for _ in range(2)]
    fidelity = gs.gradient_fidelity(model, space, batches)
    assert fidelity[:, 2] == pytest.approx(1.0, abs=1e-6)
    assert (fidelity[:, 3:] < 1 - 1e-3).all() and (fidelity[:, 3:] > 0).all()
    predictor = gs.AccuracyPredictor(fidelity)
    configs = space.all_configs()
    scores = predictor.predict(configs)
    depth = (configs != 0).sum(1)
    for d in range(len(space.layers) + 1):  # at each depth the exact gradient scores highest
        assert scores[depth == d].max() == pytest.approx(d, abs=1e-5)
    assert predictor.predict([(2,) * 3])[0] == pytest.approx(predictor.predict([(1,) * 3])[0], abs=1e-5)


def test_predictor_fit_recovers_a_linear_rule_and_reports_rank_correlation(resnet):
    _, space, _ = resnet
    rng = np.random.default_rng(0)
    fidelity = np.tile([0.0, 1.0, 0.8, 0.5], (len(space.layers), 1))
    predictor = gs.AccuracyPredictor(fidelity)
    configs = gs.sample_configs(space, 20, seed=3)
    feats = predictor.features(configs)
    truth = 0.6 + 0.04 * feats[:, 0] - 0.01 * feats[:, 1]
    fitted = predictor.fit(configs, truth, ridge=1e-9)
    assert fitted.coef == pytest.approx([0.6, 0.04, -0.01], abs=1e-6)
    assert fitted.cv_spearman > 0.99 and fitted.cv_mae < 1e-6  # ties in the truth: rounding orders them
    noisy = fitted.fit(configs, truth + rng.normal(0, 0.05, len(truth)))
    assert 0.02 < noisy.cv_mae < 0.06  # held-out error about the noise (sd 0.05)
    assert noisy.cv_spearman < fitted.cv_spearman
    with pytest.raises(ValueError, match="at least 4"):
        predictor.fit(configs[:3], truth[:3])


def _rows(batch, rule):
    rows = []
    shapes = [(64, 64, 24, 1), (128, 64, 12, 1), (256, 256, 6, 1), (512, 128, 3, 1), (128, 256, 24, 2),
              (256, 512, 12, 2), (64, 128, 30, 2), (3, 64, 48, 2)]
    for j, (c, o, h, s) in enumerate(shapes):
        geometry = {"case": f"c{j}", "c_in": c, "c_out": o, "h": h, "w": h, "kernel": 3, "stride": s, "padding": 1,
                    "dilation": 1, "groups": 1}
        for r in (2, 4):
            call = conv_call(geometry)
            rows.append({**geometry, "batch": batch, "patch_size": r,
                         "torch_ms": rule("vanilla", gs.LatencyModel._features(call, None, True, True, batch)),
                         "filtered_ms": rule("filtered", gs.LatencyModel._features(call, r, True, True, batch))})
    return rows


def test_latency_model_recovers_a_known_rule_and_gives_latency_tables(resnet):
    truth = {"vanilla": np.array([0.2, 0.01, 0.5, 2.0]), "filtered": np.array([0.1, 0.05, 0.3, 1.0])}
    rows = _rows(16, lambda kind, x: float(truth[kind] @ x))
    rows[-1]["torch_ms"] = rows[-2]["torch_ms"] = 1000.0  # the RGB stem: left out of the fit
    model = gs.LatencyModel.fit(rows)
    assert model.batch_size == 16 and model.points == {"vanilla": 7, "filtered": 14}
    for kind in truth:
        assert model.coef[kind] == pytest.approx(truth[kind], rel=1e-6, abs=1e-9)
        assert model.fit_error[kind] < 1e-6 and model.loo_error[kind] < 1e-6
    assert "fit error" in model.describe()
    net, space, _ = resnet
    tables = gs.cost_tables(net, space, 64, latency=model)
    frozen, vanilla, filtered = tables.evaluate([[0] * 6, [0] * 5 + [1], [0] * 5 + [2]])["latency_ms"]
    assert vanilla > filtered > frozen > 0  # frozen: the classifier alone
    found = gs.search(tables, gs.AccuracyPredictor(np.tile([0.0, 1.0, 0.9, 0.8], (6, 1))), {"latency_ms": 5.0})
    assert found.costs["latency_ms"] <= 5.0 and found.label == found.exhaustive["label"]
    with pytest.raises(ValueError, match="one batch size"):
        gs.LatencyModel.fit(_rows(16, lambda k, x: 1.0) + _rows(32, lambda k, x: 1.0))


def test_bad_input_is_refused_with_the_valid_values(resnet):
    model, space, _ = resnet
    with pytest.raises(ValueError, match=r"last must be an int in \[1, 17\]"):
        gs.search_space(model, torch.zeros(1, 3, 64, 64), 18)
    with pytest.raises(ValueError, match="1..9"):
        gs.SearchSpace(("a",), (12,), "fc")
    for text in ("memory", "memory=-3KB", "speed=3", "flops=abc"):
        with pytest.raises(ValueError, match="budget"):
            gs.parse_budget(text)
    assert gs.parse_budget("memory=16KB") == ("activation_bytes", 16384)
    assert gs.parse_budget("flops=8M") == ("backward_flops", 8e6)
    assert gs.parse_budget("latency=12.5") == ("latency_ms", 12.5)
    with pytest.raises(ValueError, match="choices"):
        space.label((0, 1))
    samples = gs.sample_configs(space, 30, seed=0)
    assert len(set(samples)) == 30 and {sum(c != 0 for c in s) for s in samples} >= set(range(2, 7))


def test_emp_alpha_tables_equal_the_cost_model_of_the_pruned_network():
    model = _folded("resnet18", 64)
    space = gs.search_space(model, torch.zeros(1, 3, 64, 64), 5, (2, 4))
    tables = gs.cost_tables(model, space, 64, batch_size=2, alpha=0.3)
    plain = gs.cost_tables(model, space, 64, batch_size=2)
    configs = gs.sample_configs(space, 8, seed=2) + [(0, 0, 0, 1, 1), (0, 0, 0, 2, 2)]
    costs, unpruned = tables.evaluate(configs), plain.evaluate(configs)
    assert (costs["activation_bytes"] == unpruned["activation_bytes"]).all()  # EMP keeps what the layer keeps
    for j, config in enumerate(configs):
        method, configured = _configured_alpha(model, space, config, 0.3)
        report = method.cost(configured, 64, batch_size=2)
        assert costs["backward_flops"][j] == report.backward_flops, space.label(config)
        if all(c in (0, 1) for c in config):  # on an exact backward pruning saves more than its scoring costs
            assert costs["backward_flops"][j] < unpruned["backward_flops"][j]
        assert costs["activation_bytes"][j] == report.activation_bytes
        sizes = {n: m.patch_size for n, m in configured.named_modules() if type(m).__name__ == "PrunedConv2d"}
        assert sizes == {n: space.patch_size(c) for n, c in zip(space.layers, config) if c}
    assert gs.method_tag(space, (0, 0, 0, 2, 2), 0.3) == "emp0.3-2L-R2"
    assert gs.run_from_tag(space, "emp0.3-2L-R2") == ((0, 0, 0, 2, 2), 0.3)
    assert gs.run_from_tag(space, "emp0.5-3L") == ((0, 0, 1, 1, 1), 0.5)
    assert gs.run_from_tag(space, space.label((0, 1, 0, 3, 2), 0.25)) == ((0, 1, 0, 3, 2), 0.25)
    assert gs.run_from_tag(space, "R2-2L-R2") is None and gs.config_from_tag(space, "emp0.5-3L") is None
    with pytest.raises(ValueError, match=r"alpha .* must be in \(0, 1\]"):
        gs.cost_tables(model, space, 64, alpha=0.0)


def _configured_alpha(model, space, config, alpha):
    method = build_method(gs.method_config(space, config, alpha))
    configured = copy.deepcopy(model)
    method.apply(configured, torch.zeros(1, 3, 64, 64))
    return method, configured


def test_pruning_lowers_the_fidelity_and_the_knob_search_matches_enumeration(resnet):
    model, space, tables = resnet
    torch.manual_seed(0)
    batches = [(torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,)))]
    fidelity = {a: gs.gradient_fidelity(model, space, batches, alpha=a) for a in (1.0, 0.5, 0.25)}
    assert fidelity[1.0][:, 1] == pytest.approx(1.0)
    assert (fidelity[0.25][:, 1:] < fidelity[0.5][:, 1:]).all() and (fidelity[0.5][:, 1:] < fidelity[1.0][:, 1:]).all()
    predictor = gs.AccuracyPredictor(fidelity[1.0], by_alpha={0.5: fidelity[0.5], 0.25: fidelity[0.25]})
    by_alpha = {a: tables if a == 1 else gs.cost_tables(model, space, 64, alpha=a) for a in fidelity}
    everything = tables.evaluate(space.all_configs())
    for quantile in (0.05, 0.3, 0.7):  # FLOPs budgets: pruning saves FLOPs, not memory
        budget = {"backward_flops": float(np.quantile(everything["backward_flops"], quantile))}
        found = gs.search_knob(by_alpha, predictor, budget)
        assert found.label == found.exhaustive["label"] and found.costs["backward_flops"] <= budget["backward_flops"]
        _, configured = _configured_alpha(model, space, found.config, found.alpha)
        assert estimate_configured(configured, 64).backward_flops == found.costs["backward_flops"]
    found = gs.search_knob(by_alpha, predictor, {"activation_bytes": 1e9})  # unconstrained: exact gradients
    assert found.alpha == 1.0 and found.label == "V" * 6
    with pytest.raises(ValueError, match="no gradient fidelity for alpha 0.75"):
        gs.search_knob({0.75: gs.cost_tables(model, space, 64, alpha=0.75)}, predictor, {"activation_bytes": 1e9})


def test_a_better_exhaustive_optimum_replaces_what_shgo_found():
    tables, predictor = _synthetic(k=4, n_patch=2, seed=0)
    budgets = {"activation_bytes": float(np.median(tables.evaluate(tables.space.all_configs())["activation_bytes"]))}
    full = gs.exhaustive(tables, predictor, budgets)
    checked = _checked(replace(full, config=(0, 0, 0, 1), label="___V", predicted=-1.0), full, 0.1, 81)
    assert checked.label == full.label and checked.exhaustive["shgo_label"] == "___V"
    same = replace(full, exhaustive=None)
    kept = _checked(same, full, 0.1, 81)  # as good as the enumeration: SHGO's result stays, the check recorded
    assert kept is same and "shgo_label" not in kept.exhaustive and kept.exhaustive["configurations"] == 81
