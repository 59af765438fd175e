"""The extension point: a method defined here, in a test file, runs through fit, cost and report
with no change anywhere else (a new method is one module plus one YAML file)."""

import json
from pathlib import Path

import torch

from classification.cli import main
from classification.report import collect, main as report_main
from gradfilt import freeze
from gradfilt.methods import Method, register_method

CFG = Path(__file__).resolve().parents[2] / "configs" / "classification"


@register_method("toy_half_batch")
class ToyHalfBatch(Method):
    """Trains the classifier's bias only, on every `keep_every`-th sample of each batch.

    Args:
        keep_every: keep samples 0, k, 2k, ... of each batch.
    """

    calls: dict[str, list[int]] = {"select": [], "before": [], "after": []}

    def __init__(self, keep_every: int = 2) -> None:
        if keep_every < 1:
            raise ValueError(f"keep_every must be >= 1, got {keep_every}")
        self.keep_every = keep_every

    def apply(self, model, example_input):
        freeze(model, ["", "~fc.bias"])

    def select_samples(self, model, inputs, targets, step):
        self.calls["select"].append(step)
        return torch.arange(0, len(inputs), self.keep_every)

    def before_backward(self, model, loss, step):
        self.calls["before"].append(step)

    def after_backward(self, model, step):
        self.calls["after"].append(step)
        assert model.fc.bias.grad is not None and model.fc.weight.grad is None

    @property
    def tag(self):
        return f"toy-every{self.keep_every}"

    def fields(self):
        return {"method": self.tag, "layers": "fc.bias", "patch_size": "-"}


def test_a_method_defined_in_a_test_file_runs_through_fit_cost_and_report(fmnist_root, tmp_path, capsys):
    method_yaml = tmp_path / "toy.yaml"
    method_yaml.write_text("model:\n  method:\n    class_path: ToyHalfBatch\n    init_args:\n      keep_every: 4\n")
    files = [CFG / "base.yaml", CFG / "models" / "resnet18.yaml", CFG / "datasets" / "fmnist.yaml",
             CFG / "schedules" / "fmnist_finetune.yaml", method_yaml]
    args = [*(a for f in files for a in ("--config", str(f))),
            "--data.data_dir", str(fmnist_root), "--data.split_file", str(tmp_path / "split.npy"),
            "--data.image_size", "32", "--data.subset", "160", "--data.batch_size", "32", "--data.num_workers", "0",
            "--runs_dir", str(tmp_path / "runs"), "--table", "toy", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    ToyHalfBatch.calls = {"select": [], "before": [], "after": []}
    cli = main(["fit", *args])
    steps = cli.trainer.global_step
    assert steps == 4 and ToyHalfBatch.calls == {k: [0, 1, 2, 3] for k in ("select", "before", "after")}
    assert cli.model.method.tag == "toy-every4"
    assert (tmp_path / "runs" / "toy" / "resnet18" / "fmnist" / "toy-every4" / "best.ckpt").is_file()
    kept = cli.trainer.logged_metrics["Method/KeptFraction_epoch"]
    assert float(kept) == 0.25  # 8 of every 32 samples trained on

    capsys.readouterr()
    assert main(["cost", *args, "--json"]) is None
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "toy-every4" and result["trainable_params"] == 10
    assert [(layer["name"], layer["type"]) for layer in result["layers"]] == [("fc", "linear-bias")]
    assert result["backward_flops"] == 10 and result["activation_bytes"] == 0  # a bias gradient keeps nothing

    rows = collect([tmp_path / "runs" / "toy"])
    assert [(r["method"], r["layers"], r["kept_fraction"]) for r in rows] == [("toy-every4", "fc.bias", 0.25)]
    assert report_main([str(tmp_path / "runs" / "toy")]) == 0
    out = capsys.readouterr().out
    assert "| resnet18 | fmnist | toy-every4 | fc.bias | - |" in out
    assert "| step memory | kept % | training FLOPs | saved % | s / epoch |" in out
    assert "| 40.00B | 25.0 |" in out.splitlines()[2]
    # the main network's forward and backward on the quarter it trained on, nothing else
    assert rows[0]["training_flops"] == 0.25 * (result["forward_flops"] + result["backward_flops"])
