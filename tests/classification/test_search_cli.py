"""``python -m classification search``: sampled and searched configurations are method configs the CLI runs."""

import json
from pathlib import Path

import pytest
import torch

from classification.cli import main
from classification.config import resolve_config
from classification.module import method_of
from classification.search_cli import plain_model
from gradfilt import FilteredConv2d
from gradfilt import search as gs
from gradfilt.methods import estimate

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "configs" / "classification"


def _args(fmnist_root, tmp_path, *extra):
    files = [CFG / "base.yaml", CFG / "models" / "resnet18.yaml", CFG / "datasets" / "fmnist.yaml",
             CFG / "schedules" / "fmnist_finetune.yaml"]
    return [*(a for f in files for a in ("--config", str(f))),
            "--data.data_dir", str(fmnist_root), "--data.split_file", str(tmp_path / "split.npy"),
            "--data.image_size", "32", "--data.subset", "160", "--data.batch_size", "32", "--data.num_workers", "0",
            "--runs_dir", str(tmp_path / "runs"), "--table", "t", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


def _trained_and_filtered(config):
    module_args = config.model.as_dict()
    model, size = plain_model(config)
    method = method_of(module_args["method"])
    method.apply(model, torch.zeros(1, 3, size, size))
    trained = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight")}
    filtered = {n for n, m in model.named_modules() if isinstance(m, FilteredConv2d)}
    return trained, filtered


def test_sampled_configurations_round_trip_through_the_cli_parser(fmnist_root, tmp_path, capsys):
    args = _args(fmnist_root, tmp_path)
    main(["search", *args, "--sample", "6", "--last", "4", "--out", str(tmp_path / "s")])
    labels = capsys.readouterr().out.split()[-6:]
    files = sorted((tmp_path / "s" / "samples").glob("*.yaml"))
    assert sorted(f.stem for f in files) == sorted(labels)
    layers = ("layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2")
    space = gs.SearchSpace(layers, (2, 4, 7), "fc")
    for path in files:
        config = space.parse(path.stem)
        trained, filtered = _trained_and_filtered(resolve_config([*args, "--config", str(path)]))
        assert trained == {n for n, c in zip(layers, config) if c} | {"fc"}, path.stem
        assert filtered == {n for n, c in zip(layers, config) if c >= 2}, path.stem
    # with the EMP knob: a third as many again, pruned, and the folder holds this sampling only
    main(["search", *args, "--sample", "6", "--last", "4", "--emp-alphas", "0.5", "--out", str(tmp_path / "s")])
    files = sorted((tmp_path / "s" / "samples").glob("*.yaml"))
    pruned = [f for f in files if f.stem.endswith("-a0.5")]
    assert len(files) == 8 and len(pruned) == 2
    for path in pruned:
        config, alpha = space.parse_run(path.stem)
        method = method_of(resolve_config([*args, "--config", str(path)]).model.as_dict()["method"])
        assert type(method).__name__ == "ErrorMapPruning" and method.alpha == alpha == 0.5


def test_search_under_a_fixed_configurations_memory_writes_a_runnable_method(fmnist_root, tmp_path, capsys):
    args = _args(fmnist_root, tmp_path, "--data.image_size", "64")  # layer4 sees 2x2 maps: R2 keeps a quarter
    layers = ("layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2")
    space = gs.SearchSpace(layers, (2, 4, 7), "fc")
    measured = tmp_path / "samples"
    for j, label in enumerate(["___V", "__22", "_44V", "2222", "VV__", "___7"]):
        (measured / label).mkdir(parents=True)
        (measured / label / "best.json").write_text(json.dumps({"score": 0.5 + 0.01 * j}))
    out = tmp_path / "found"
    main(["search", *args, "--last", "4", "--budget", "memory=R2-2L", "--fidelity-batches", "1",
          "--measured", str(measured), "--out", str(out)])
    printed = capsys.readouterr().out
    summary = json.loads((out / "search.json").read_text())
    budget = estimate(plain_model(resolve_config(args))[0], 64, 2, 2).activation_bytes  # R2-2L's memory
    assert summary["budgets"] == {"activation_bytes": budget}
    result = summary["result"]
    assert result["costs"]["activation_bytes"] <= budget
    assert result["label"] == result["exhaustive"]["label"]
    assert summary["predictor"]["coef"] is not None and len(summary["samples"]) == 6
    assert "| R2-2L | __22 | yes |" in printed and "| vanilla-2L | __VV | no |" in printed
    assert "leave-one-out Spearman" in printed and (out / "pareto.png").stat().st_size > 0
    # the emitted YAML runs as is, and trains what the search chose
    config = resolve_config([*args, "--config", str(out / "method.yaml")])
    trained, filtered = _trained_and_filtered(config)
    chosen = space.parse(result["label"])
    assert trained == {n for n, c in zip(layers, chosen) if c} | {"fc"}
    assert filtered == {n for n, c in zip(layers, chosen) if c >= 2}
    cli = main(["fit", *args, "--config", str(out / "method.yaml"), "--run_name", result["label"]])
    assert cli.model.cost.activation_bytes == result["costs"]["activation_bytes"]


def test_search_refuses_bad_input_before_any_work(fmnist_root, tmp_path):
    args = _args(fmnist_root, tmp_path)
    with pytest.raises(SystemExit, match="--sample N or at least one --budget"):
        main(["search", *args])
    with pytest.raises(SystemExit, match="no file"):
        main(["search", *args, "--budget", "latency=3", "--latency-csv", str(tmp_path / "none.csv")])
    with pytest.raises(ValueError, match="a budget is memory="):
        main(["search", *args, "--last", "2", "--budget", "speed=3"])
    with pytest.raises(ValueError, match="latency-csv"):
        main(["search", *args, "--last", "2", "--budget", "latency=R2-2L"])
    assert not (tmp_path / "runs").exists()


def test_a_bad_sample_count_leaves_the_previous_samples(fmnist_root, tmp_path):
    samples = tmp_path / "search" / "samples"
    samples.mkdir(parents=True)
    (samples / "____VV22.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match=r"count must be in \[1, "):
        main(["search", *_args(fmnist_root, tmp_path), "--last", "2", "--sample", "0", "--out", str(tmp_path / "search")])
    assert [p.name for p in samples.iterdir()] == ["____VV22.yaml"]


def test_resolving_a_config_for_cost_or_search_warns_of_nothing(fmnist_root, tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolve_config(_args(fmnist_root, tmp_path))
    assert not [w for w in caught if "args parameter" in str(w.message)]


@pytest.mark.parametrize("extra, error, message", [
    (["--budget", "memory=abc"], ValueError, "the value must be a positive number"),
    (["--budget", "memory=R9-2L"], ValueError, r"R9 is not among --patch-sizes \[2, 4, 7\]"),
    (["--budget", "latency=30"], ValueError, "a latency budget needs --latency-csv"),
    (["--budget", "memory=16KB", "--compare", "/nonexistent"], SystemExit, "--compare: no folder /nonexistent"),
    (["--budget", "latency=30", "--latency-csv", "BAD"], SystemExit, "not the conv.csv of python -m latency"),
])
def test_search_arguments_are_checked_before_the_model_is_built(fmnist_root, tmp_path, monkeypatch, extra, error,
                                                                message):
    import classification.search_cli as search_cli

    (tmp_path / "bad.csv").write_text("case,r\nx,2\n")
    extra = [str(tmp_path / "bad.csv") if e == "BAD" else e for e in extra]

    def never(*args):
        raise AssertionError("the model was built")

    monkeypatch.setattr(search_cli, "plain_model", never)
    with pytest.raises(error, match=message):
        main(["search", *_args(fmnist_root, tmp_path), "--last", "2", *extra])


def test_a_budget_nothing_fits_is_said_before_the_gradient_fidelity(fmnist_root, tmp_path, monkeypatch):
    import classification.search_cli as search_cli

    def never(*args):
        raise AssertionError("the fidelity was measured")

    monkeypatch.setattr(search_cli, "_predictor", never)
    with pytest.raises(SystemExit, match="no configuration fits the budgets: training the classifier alone costs"):
        main(["search", *_args(fmnist_root, tmp_path), "--last", "2", "--budget", "flops=1"])
