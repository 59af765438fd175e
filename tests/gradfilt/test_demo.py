"""The built-in demo on a small real Fashion-MNIST subset."""

import pytest

from gradfilt.demo import format_table, main, run


def test_demo_runs_and_measures_memory(fmnist_root, tmp_path):
    rows = run(fmnist_root, pretrain_size=1500, finetune_size=600, epochs=1, batch_size=64, seed=0,
               log_dir=tmp_path)
    assert [r["strategy"] for r in rows] == ["vanilla", "filter_r2", "filter_r4"]
    # the last two convs see 64 channels at 7x7: vanilla keeps both inputs, R2 a 4x4 and R4 a 2x2 grid
    assert [r["saved_kb"] for r in rows] == [64 * 64 * 49 * 4 * 2 / 1024, 64 * 64 * 16 * 4 * 2 / 1024,
                                             64 * 64 * 4 * 4 * 2 / 1024]
    assert rows[0]["grad_cosine"] == pytest.approx(1.0, abs=1e-5)  # float32 cosine of a vector with itself
    assert all(0.5 < r["grad_cosine"] < 0.999 for r in rows[1:])
    assert all(r["acc"] > 40.0 for r in rows)  # 5 classes: chance is 20%
    for r in rows:
        assert list((tmp_path / r["strategy"]).glob("events.out.tfevents.*"))
    assert "| filter_r4 | 4 | 2 |" in format_table(rows, 64)


def test_demo_reports_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found under .*run `make data`"):
        main(["--data", str(tmp_path), "--log-dir", str(tmp_path / "runs")])
