"""The report's folding of one configuration's runs under several seeds."""

import statistics

import pytest

from classification.report import COLUMNS, markdown, mean_over_seeds


def _row(method, val_acc, kept=None, model="resnet20", **extra):
    row = dict.fromkeys(COLUMNS)
    row.update(table="sweep", model=model, dataset="fmnist", method=method, layers="all", val_acc=val_acc,
               backward_flops=100.0, kept_fraction=kept, run=f"runs/{method}", **extra)
    return row


def test_runs_of_one_configuration_under_several_seeds_fold_into_one_row():
    rows = [_row("eif-R0.1-s0", 0.80, kept=0.5), _row("eif-R0.1-s1", 0.84, kept=0.7), _row("eif-R0.1-s2", 0.85, kept=0.6),
            _row("sgd-s0", 0.9), _row("eif-R0.1-s0", 0.5, model="lenet"), _row("pretrain", 0.7)]
    folded = {(r["model"], r["method"]): r for r in mean_over_seeds(rows)}
    assert set(folded) == {("resnet20", "eif-R0.1"), ("resnet20", "sgd"), ("lenet", "eif-R0.1"), ("resnet20", "pretrain")}
    eif = folded["resnet20", "eif-R0.1"]
    assert eif["seeds"] == 3 and eif["val_acc"] == pytest.approx(0.83)
    assert eif["val_acc_std"] == pytest.approx(statistics.stdev([0.80, 0.84, 0.85]))
    assert eif["kept_fraction"] == pytest.approx(0.6) and eif["backward_flops"] == 100.0
    assert eif["run"] == "runs/eif-R0.1-s0 runs/eif-R0.1-s1 runs/eif-R0.1-s2"
    assert folded["resnet20", "sgd"]["seeds"] == 1 and folded["resnet20", "sgd"]["val_acc_std"] is None
    assert folded["resnet20", "pretrain"]["seeds"] is None  # not a seeded run: unchanged
    # a measurement missing in one seed's run is missing in the mean
    assert mean_over_seeds([_row("a-s0", 0.5, kept=0.5), _row("a-s1", 0.6)])[0]["kept_fraction"] is None
    table = markdown(mean_over_seeds(rows))
    assert "| seeds | val acc std | kept % |" in table.splitlines()[0]
    assert "| resnet20 | fmnist | eif-R0.1 | all | - | 83.0 | - | 100.00 | - | - | - | - | 3 | 2.6 | 60.0 |" in table
