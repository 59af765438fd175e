"""End-to-end LightningCLI runs on a few hundred real Fashion-MNIST images at 32x32, and CLI errors."""

import json
import re
from pathlib import Path

import pytest
import torch

from classification.cli import main
from classification.module import ClassificationModule, method_of
from classification.report import collect, main as report_main
from gradfilt import FilteredConv2d
from gradfilt.cost import training_flops
from gradfilt.methods import estimate
from gradfilt.models import build_model

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "configs" / "classification"


def _args(fmnist_root, tmp_path, *extra, configs=()):
    """Config files (base, resnet18, fmnist, then ``configs``), then tiny-run overrides, then ``extra``."""
    files = [CFG / "base.yaml", CFG / "models" / "resnet18.yaml", CFG / "datasets" / "fmnist.yaml", *configs]
    return [*(a for f in files for a in ("--config", str(f))),
            "--data.data_dir", str(fmnist_root), "--data.split_file", str(tmp_path / "split.npy"),
            "--data.image_size", "32", "--data.subset", "160", "--data.batch_size", "32", "--data.num_workers", "0",
            "--runs_dir", str(tmp_path / "runs"), "--table", "t", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


def _finetune(fmnist_root, tmp_path, method, *extra):
    pretrained = tmp_path / "runs" / "t" / "resnet18" / "fmnist" / "pretrain" / "best.ckpt"
    return _args(fmnist_root, tmp_path, "--model.method.layers", "2", "--model.init_from", str(pretrained),
                 *extra, configs=[CFG / "schedules" / "fmnist_finetune.yaml", CFG / "methods" / f"{method}.yaml"])


@pytest.fixture(scope="module")
def runs(fmnist_root, tmp_path_factory):
    """Pretrain, then fine-tune vanilla and R2 (2 layers) from it; returns (tmp, {name: cli})."""
    tmp = tmp_path_factory.mktemp("cls")
    clis = {"pretrain": main(["fit", *_args(fmnist_root, tmp, configs=[CFG / "schedules" / "fmnist_pretrain.yaml"])])}
    for method in ("vanilla", "r2"):
        clis[method] = main(["fit", *_finetune(fmnist_root, tmp, method)])
    return tmp, clis


def test_pretrain_writes_logs_config_and_best_checkpoint(runs):
    tmp, clis = runs
    folder = tmp / "runs" / "t" / "resnet18" / "fmnist" / "pretrain"
    assert (folder / "best.ckpt").is_file()
    version = folder / "version_0"
    assert (version / "config.yaml").is_file() and list(version.glob("events.out.tfevents.*"))
    assert clis["pretrain"].model.hparams.num_classes == 10  # linked from data.dataset


def test_filtered_finetune_trains_only_the_filtered_layers(runs, fmnist_root):
    tmp, clis = runs
    model = clis["r2"].model
    assert model.method.tag == "R2-2L"
    trained = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert trained == {"layer4.1.conv1.weight", "layer4.1.conv1.bias", "layer4.1.conv2.weight",
                       "layer4.1.conv2.bias", "fc.weight", "fc.bias"}  # biases from fuse_bn
    for name in ("layer4.1.conv1", "layer4.1.conv2"):
        conv = model.model.get_submodule(name)
        assert type(conv) is FilteredConv2d and conv.patch_size == 2
    assert sum(isinstance(m, FilteredConv2d) for m in model.modules()) == 2
    fresh = ClassificationModule(**{k: v for k, v in model.hparams.items() if not k.startswith("_")}
                                 | {"method": method_of(model.hparams.method)})  # as set up
    before = dict(fresh.model.named_parameters())
    for name, param in model.model.named_parameters():
        if name in trained:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name  # frozen: bit-identical


def test_vanilla_and_filtered_start_from_the_same_weights(runs):
    _, clis = runs
    a, b = clis["vanilla"].model.model, clis["r2"].model.model
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if not pa.requires_grad:
            assert torch.equal(pa, pb), name
    assert not any(isinstance(m, FilteredConv2d) for m in a.modules())


def test_cost_is_logged_and_reported(runs, capsys):
    tmp, clis = runs
    rows = {r["method"]: r for r in collect([tmp / "runs" / "t"])}
    assert set(rows) == {"pretrain", "vanilla-2L", "R2-2L"}
    expected = estimate(build_model("resnet18", 10), 32, 2, 2).backward_flops  # a plain network, costed as R2-2L
    assert rows["R2-2L"]["backward_flops"] == expected == clis["r2"].model.cost.backward_flops
    assert rows["vanilla-2L"]["backward_flops"] > rows["R2-2L"]["backward_flops"]
    assert 0.0 <= rows["R2-2L"]["val_acc"] <= 1.0
    assert report_main([str(tmp / "runs" / "t")]) == 0
    out = capsys.readouterr().out
    assert "| resnet18 | fmnist | R2-2L | 2 | 2 |" in out
    assert (tmp / "runs" / "t" / "report.csv").is_file() and (tmp / "runs" / "t" / "report.png").stat().st_size > 0


def test_validate_test_and_resume(runs, fmnist_root):
    tmp, clis = runs
    best = tmp / "runs" / "t" / "resnet18" / "fmnist" / "R2-2L" / "best.ckpt"
    args = _finetune(fmnist_root, tmp, "r2")
    main(["validate", *args, "--ckpt_path", str(best)])
    main(["test", *args, "--ckpt_path", str(best)])
    row = {r["method"]: r for r in collect([tmp / "runs" / "t"])}["R2-2L"]
    assert row["test_acc"] is not None
    last = next((tmp / "runs" / "t" / "resnet18" / "fmnist" / "R2-2L" / "version_0" / "checkpoints").glob("last*.ckpt"))
    resumed = main(["fit", *args, "--ckpt_path", str(last), "--trainer.max_epochs", "2"])
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == 2 * clis["r2"].trainer.global_step


def test_composed_configs_resolve(fmnist_root, tmp_path):
    cli = main(_args(fmnist_root, tmp_path, "--model.method.layers", "3",
                     configs=[CFG / "schedules" / "cifar_finetune.yaml", CFG / "methods" / "r4.yaml"]), run=False)
    hp, method = cli.model.hparams, cli.model.method
    assert (method.patch_size, method.layers, hp.fuse_bn, hp.momentum, hp.image_size) == (4, 3, True, 0.0, 32)
    assert method.tag == "R4-3L"
    assert cli.datamodule.partition == 1 and cli.trainer.gradient_clip_val == 2.0
    explicit = main(_args(fmnist_root, tmp_path, configs=[CFG / "methods" / "resnet18_layer4_r2.yaml"]), run=False)
    assert explicit.model.method.tag.startswith("R2-custom-")
    filtered = sorted(n for n, m in explicit.model.model.named_modules() if isinstance(m, FilteredConv2d))
    assert filtered == ["layer4.1.conv1", "layer4.1.conv2"]


@pytest.mark.parametrize("extra, error, message", [
    (["--model.bogus", "1"], SystemExit, "bogus"),
    (["--data.dataset", "svhn"], SystemExit, r"unknown dataset 'svhn'; valid datasets: \['cifar10', 'cifar100'"),
    (["--model.arch", "vgg"], ValueError, r"unknown arch 'vgg'; valid archs: \['lenet', 'mcunet', 'mobilenet_v2'"),
    (["--model.method", "Vanilla", "--model.method.layers", "40"], ValueError,
     r"model.method \(vanilla-40L\) on resnet18: vanilla layers=40: asked for the last 40 main-path conv layers "
     r"but the forward pass runs only 17"),
    (["--model.method", "GradientFilter", "--model.method.patch_size", "2", "--model.method.filter_install",
      "[{path: fc, patch_size: 2}]"], ValueError, "either patch_size"),
    (["--model.method", "GradientFilter", "--model.method.filter_install", "[{path: layer9, patch_size: 2}]"],
     KeyError, "layer9"),
    (["--model.method", "Sparse"], SystemExit, "Sparse"),
])
def test_cli_errors(fmnist_root, tmp_path, extra, error, message, capsys):
    """Parser errors exit with status 2 and say why on stderr; set-up errors raise with the reason."""
    with pytest.raises(error, match=None if error is SystemExit else message) as info:
        main(_args(fmnist_root, tmp_path, *extra), run=False)
    if error is SystemExit:
        assert info.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_missing_data_directory(fmnist_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; set data.data_dir"):
        main(_args(fmnist_root, tmp_path, "--data.data_dir", str(tmp_path / "nowhere")), run=False)


def test_cost_takes_the_configs_and_overrides_of_fit(capsys):
    files = ["base.yaml", "models/resnet34.yaml", "datasets/cifar100.yaml", "schedules/cifar_finetune.yaml",
             "methods/r2.yaml"]
    argv = [a for f in files for a in ("--config", str(CFG / f))]
    assert main(["cost", *argv, "--model.method.layers", "4", "--json"]) is None
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "R2-4L"
    assert result["backward_flops"] == pytest.approx(64.21e6, rel=0.01)  # Table 11, ResNet-34 CIFAR-100 R2 4L
    assert result["patch_size"] == {"layer4.1.conv1": 2, "layer4.1.conv2": 2, "layer4.2.conv1": 2,
                                    "layer4.2.conv2": 2}
    # the computation saved is measured against full BP on every layer of the same network
    assert result["training_flops"] == result["forward_flops"] + result["backward_flops"]
    assert result["reference_flops"] == training_flops(estimate(build_model("resnet34", 100), 224, "all"))
    assert main(["cost", *argv, "--model.method.layers", "4"]) is None
    saved = 100 * (1 - result["training_flops"] / result["reference_flops"])
    assert capsys.readouterr().out.splitlines()[-1].endswith(f", {saved:.1f} % saved)")
    assert main(["cost", *argv, "--model.method.patch_size", "4", "--json"]) is None  # layers 2 from r2.yaml
    assert json.loads(capsys.readouterr().out)["method"] == "R4-2L"
    with pytest.raises(SystemExit):
        main(["cost", *argv, "--model.method.bogus", "1"])
    assert "bogus" in capsys.readouterr().err


def test_bf16_mixed_precision_fit_with_filters(runs, fmnist_root):
    tmp, clis = runs
    cli = main(["fit", *_finetune(fmnist_root, tmp, "r2", "--trainer.precision", "bf16-mixed",
                                  "--run_name", "r2-bf16")])
    model = cli.model.model
    assert cli.trainer.global_step == clis["r2"].trainer.global_step
    conv = model.get_submodule("layer4.1.conv2")
    assert type(conv) is FilteredConv2d and conv.weight.dtype == torch.float32
    start = clis["vanilla"].model.model  # same pretrained start, frozen layers untouched by both
    assert not torch.equal(conv.weight, start.get_submodule("layer4.1.conv2").weight)
    assert torch.isfinite(conv.weight).all()
    assert torch.equal(model.layer1[0].conv1.weight, start.layer1[0].conv1.weight)


def test_ckpt_path_last_resumes_the_newest_last_checkpoint_or_says_what_exists(runs, fmnist_root):
    tmp, clis = runs
    args = _finetune(fmnist_root, tmp, "r2", "--run_name", "r2-resume")
    first = main(["fit", *args])
    resumed = main(["fit", *args, "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    last = tmp / "runs" / "t" / "resnet18" / "fmnist" / "r2-resume" / "version_0" / "checkpoints" / "last.ckpt"
    assert resumed.trainer.ckpt_path == str(last)  # restored from the first fit, not trained from scratch
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 2 * first.trainer.global_step
    fresh = _finetune(fmnist_root, tmp, "r2", "--run_name", "never-ran")
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no last checkpoint .* it holds nothing"):
        main(["fit", *fresh, "--ckpt_path", "last"])
    assert not (tmp / "runs" / "t" / "resnet18" / "fmnist" / "never-ran").exists()  # nothing half-made


def test_fast_dev_run_keeps_the_exported_checkpoint_and_the_working_directory(runs, fmnist_root, monkeypatch,
                                                                             tmp_path):
    tmp, _ = runs
    best = tmp / "runs" / "t" / "resnet18" / "fmnist" / "R2-2L" / "best.ckpt"
    before = best.read_bytes()
    monkeypatch.chdir(tmp_path)
    main(["fit", *_finetune(fmnist_root, tmp, "r2"), "--trainer.fast_dev_run", "true"])
    assert best.read_bytes() == before
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_a_report_row_is_one_model(runs, fmnist_root):
    """A test of an older fit never lands in the row of a newer fit of the same run folder."""
    tmp, _ = runs
    args = _finetune(fmnist_root, tmp, "r2", "--run_name", "r2-rows")
    folder = tmp / "runs" / "t" / "resnet18" / "fmnist" / "r2-rows"
    main(["fit", *args])
    assert json.loads((folder / "best.json").read_text())["version"] == "version_0"
    main(["test", *args, "--ckpt_path", str(folder / "best.ckpt")])
    row = {r["method"]: r for r in collect([tmp / "runs" / "t"])}["r2-rows"]
    source = json.loads((folder / "best.json").read_text())["checkpoint"]
    assert row["test_acc"] is not None and row["test_ckpt"] == source and "version_0/checkpoints" in source
    assert row["run"] == str(folder / "version_0")
    main(["fit", *args, "--model.lr", "0.01"])  # a new model in the same folder
    rows = [r for r in collect([tmp / "runs" / "t"], all_versions=True) if r["method"] == "r2-rows"]
    assert [(Path(r["run"]).name, r["test_acc"] is not None) for r in rows] == [("version_0", True),
                                                                               ("version_2", False)]
    newest = {r["method"]: r for r in collect([tmp / "runs" / "t"])}["r2-rows"]
    assert newest["run"] == str(folder / "version_2") and newest["test_acc"] is None
    (folder / "best.ckpt.part").write_bytes(b"half")  # an export that was killed midway
    main(["fit", *args])
    assert not list(folder.glob("*.part"))


@pytest.mark.slow
def test_fits_started_together_get_their_own_versions_and_a_failed_start_leaves_none(runs, fmnist_root):
    import os
    import subprocess
    import sys

    tmp, _ = runs
    args = _finetune(fmnist_root, tmp, "r2", "--run_name", "r2-together")
    folder = tmp / "runs" / "t" / "resnet18" / "fmnist" / "r2-together"
    procs = [subprocess.Popen([sys.executable, "-m", "classification", "fit", *args], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    versions = sorted(p.name for p in folder.glob("version_*"))
    assert versions == ["version_0", "version_1"]
    for v in versions:  # each fit wrote its own events and checkpoints into its own folder
        assert len(list((folder / v).glob("events.out.tfevents.*"))) == 1
        assert (folder / v / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(FileNotFoundError):
        main(["fit", *args, "--ckpt_path", str(tmp / "missing.ckpt")])  # a failed resume
    assert sorted(p.name for p in folder.glob("version_*")) == versions  # no half-made version_2
    assert os.environ.get("GRADFILT_RUN_VERSION") is None
    with pytest.raises(Exception, match="bogus"):
        main(["fit", *args, "--trainer.strategy", "bogus"])  # the Trainer itself cannot be built
    assert sorted(p.name for p in folder.glob("version_*")) == versions
    assert os.environ.get("GRADFILT_RUN_VERSION") is None  # later runs in this process reserve their own


@pytest.mark.slow
@pytest.mark.parametrize("method, tag", [("sparse_update", "sparse-b8-w2-r0.5"), ("tinytl", "tinytl")])
def test_sparse_update_and_tinytl_fine_tune_evaluate_and_keep_frozen_weights(runs, fmnist_root, method, tag):
    from gradfilt.ops.sparse import SparseConv2d

    tmp, _ = runs
    pretrained = tmp / "runs" / "t" / "resnet18" / "fmnist" / "pretrain" / "best.ckpt"
    args = _args(fmnist_root, tmp, "--model.init_from", str(pretrained),
                 configs=[CFG / "schedules" / "fmnist_finetune.yaml", CFG / "methods" / f"{method}.yaml"])
    cli = main(["fit", *args])
    model = cli.model
    assert model.method.tag == tag and any(isinstance(m, SparseConv2d) for m in model.modules())
    fresh = ClassificationModule(**{k: v for k, v in model.hparams.items() if not k.startswith("_")}
                                 | {"method": method_of(model.hparams.method)})
    before = dict(fresh.model.named_parameters())
    changed = {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    trained = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert changed and changed <= trained  # frozen parameters bit-identical
    best = tmp / "runs" / "t" / "resnet18" / "fmnist" / tag / "best.ckpt"
    tested = main(["test", *args, "--ckpt_path", str(best)])
    assert tested.trainer.callback_metrics["Test/Acc"] >= 0
    trained_state = model.model.state_dict()  # sparse convs show their merged weight
    for name, value in tested.model.model.state_dict().items():
        assert torch.equal(value, trained_state[name]), name  # the checkpoint reloads the trained model exactly


def test_dynamic_sparse_update_calibrates_fine_tunes_and_costs(runs, fmnist_root, capsys):
    from gradfilt.methods import Vanilla

    tmp, _ = runs
    pretrained = tmp / "runs" / "t" / "resnet18" / "fmnist" / "pretrain" / "best.ckpt"
    args = _args(fmnist_root, tmp, "--model.init_from", str(pretrained), "--model.method.memory_budget", "2MB",
                 configs=[CFG / "schedules" / "fmnist_finetune.yaml", CFG / "methods" / "dynamic_sparse.yaml"])
    cli = main(["fit", *args])
    module = cli.model
    method = module.method
    assert method.tag == "dyn-rotation-u0.02-2MB" and method.plan_ and method.importance_
    assert module.cost.activation_bytes == method.memory()["activation"] and method.memory()["step"] <= 2 * 2**20
    assert 0 < cli.trainer.callback_metrics["Method/Coverage"] <= 1
    # only the chosen layers and the classifier moved, from the same start as any method
    start = ClassificationModule(**{k: v for k, v in module.hparams.items() if not k.startswith("_")}
                                 | {"method": Vanilla(layers=0)}).model.state_dict()
    trained = module.model.state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, start[k])}
    allowed = {f"{p['name']}.{w}" for p in method.plan_ for w in ("weight", "bias")} | {"fc.weight", "fc.bias"}
    assert {f"{p['name']}.weight" for p in method.plan_} <= changed <= allowed
    # cost: calibrated on the configured data and weights, as fit does: the same layers
    assert main(["cost", *args, "--json"]) is None
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["method"] == method.tag and result["activation_bytes"] == module.cost.activation_bytes


def test_early_instance_filter_wrapping_error_map_pruning_trains_from_scratch(fmnist_root, tmp_path):
    args = _args(fmnist_root, tmp_path, "--model.method.method",
                 "{class_path: ErrorMapPruning, init_args: {layers: all, alpha: 0.5}}",
                 configs=[CFG / "models" / "lenet.yaml", CFG / "schedules" / "fmnist_scratch.yaml",
                          CFG / "methods" / "eif.yaml"])
    cli = main(["fit", *args])
    method = cli.model.method
    assert method.tag == "eif0.3-emp0.5-all" and method.filter is not None
    metrics = cli.trainer.callback_metrics
    assert 0 < metrics["Method/KeptFraction_epoch"] <= 1 and metrics["Method/Threshold"] > 0
    assert float(metrics["Method/Threshold"]) == pytest.approx(method.threshold)  # the last step's own value
    folder = tmp_path / "runs" / "t" / "lenet" / "fmnist" / "eif0.3-emp0.5-all"
    assert (folder / "best.ckpt").is_file()
    # the report's training computation: the kept share of the main network's forward + backward, plus the
    # filter network's on every instance, against full BP of the same network
    (row,) = collect([tmp_path / "runs" / "t"])
    size = cli.model.hparams.image_size
    cost = method.cost(cli.model.model, size)
    kept = row["kept_fraction"]
    assert row["training_flops"] == pytest.approx(kept * (cost.forward_flops + cost.backward_flops)
                                                  + cost.overhead_flops, rel=1e-6)
    full = estimate(build_model("lenet", 10), size, "all")
    assert row["computation_saved"] == pytest.approx(1 - row["training_flops"] / (full.forward_flops
                                                                                 + full.backward_flops), rel=1e-6)
    assert row["step_seconds"] > 0
    # the checkpoint records the wrapped method as plain data: test and resume load it weights-only
    tested = main(["test", *args, "--ckpt_path", str(folder / "best.ckpt")])
    assert 0 <= float(tested.trainer.callback_metrics["Test/Acc"]) <= 1
    resumed = main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 2 and resumed.model.method.tag == method.tag


def test_help_lists_the_five_subcommands_and_not_predict(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test,cost,search}" in out and "{fit,validate,test}" in out.split("usage:")[1]
    assert "predict" not in out


def test_a_remote_checkpoint_that_runs_code_is_refused(fmnist_root, tmp_path):
    import pickle

    from helpers.crafted import code_running_checkpoint, served

    marker = tmp_path / "code_ran"
    code_running_checkpoint(tmp_path / "evil.ckpt", marker)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with served(tmp_path) as url, pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            main(["validate", *_args(fmnist_root, tmp_path, "--ckpt_path", f"{url}/evil.ckpt")])
    finally:
        torch.hub.set_dir(old)
    assert not marker.exists()


def test_a_full_unpickle_cannot_be_asked_for(fmnist_root, tmp_path):
    with pytest.raises(ValueError, match="checkpoints are loaded weights-only here"):
        main(["validate", *_args(fmnist_root, tmp_path, "--weights_only", "false")])


@pytest.mark.parametrize("config", [c if c in ("eif.yaml", "r2.yaml") else pytest.param(c, marks=pytest.mark.slow)
                                    for c in sorted(p.name for p in (CFG / "methods").glob("*.yaml"))])
def test_every_methods_hyper_parameters_load_weights_only(fmnist_root, tmp_path, config):
    """What a checkpoint records of the method (as the CLI builds it) is plain data: it loads weights-only and
    rebuilds the same method."""
    import io

    from gradfilt.methods import build_method

    cli = main([*_args(fmnist_root, tmp_path, "--model.fuse_bn", "true", configs=[CFG / "methods" / config])],
               run=False)
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": dict(cli.model.hparams)}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)["hyper_parameters"]["method"]
    assert build_method(saved).config() == saved == cli.model.method.config()


def test_every_registered_method_has_a_config():
    import yaml

    from gradfilt.methods import METHODS, method_class

    used = {method_class(yaml.safe_load(p.read_text())["model"]["method"]["class_path"])
            for p in (CFG / "methods").glob("*.yaml")}
    built_in = {cls for cls in METHODS.values() if cls.__module__.startswith("gradfilt.")}  # not the tests' own
    assert len(built_in) == 7 and built_in <= used


def test_a_bad_method_argument_is_one_line_from_the_command_line(fmnist_root, tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "classification", "fit",
           *_args(fmnist_root, tmp_path, configs=[CFG / "methods" / "sparse_update.yaml"]),
           "--model.method.weight_update_ratio", "1.5"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "python -m classification: error: weight_update_ratio 1.5 is outside (0, 1]; a fraction of the channels "
        "is in (0, 1], a channel count is an int >= 1")
    assert not (tmp_path / "runs").exists()
