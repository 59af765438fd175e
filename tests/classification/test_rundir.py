"""Run folders stay inside the runs folder, and the clean-up of dead runs removes only gradfilt's own files."""

from pathlib import Path

import pytest

from classification.cli import main
from classification.rundir import run_dir, sweep

CFG = Path(__file__).resolve().parents[2] / "configs" / "classification"


@pytest.mark.parametrize("key, value", [("name", "../../victim"), ("name", "/tmp/victim"), ("name", "a/b"),
                                        ("name", ".."), ("name", ""), ("table", "../t"), ("arch", "timm/../../x"),
                                        ("arch", "/abs"), ("dataset", "a/b"), ("name", "a\\..\\b")])
def test_run_folders_never_leave_the_runs_folder(key, value):
    parts = {"table": "t", "arch": "resnet18", "dataset": "fmnist", "name": "R2-2L"} | {key: value}
    with pytest.raises(ValueError, match="is not a valid folder name under the runs folder"):
        run_dir("runs", parts["table"], parts["arch"], parts["dataset"], parts["name"])


def test_a_timm_arch_is_one_folder_per_part():
    assert run_dir("runs", "t", "timm/efficientnet_lite0", "fmnist", "R2-2L") == \
        Path("runs/t/timm/efficientnet_lite0/fmnist/R2-2L")


def test_a_run_name_outside_the_runs_folder_is_refused_before_anything_is_made(tmp_path, fmnist_root):
    args = ["fit", "--config", str(CFG / "base.yaml"), "--config", str(CFG / "models" / "resnet18.yaml"),
            "--config", str(CFG / "datasets" / "fmnist.yaml"), "--data.data_dir", str(fmnist_root),
            "--runs_dir", str(tmp_path / "deep" / "runs"), "--run_name", "../../../victim"]
    with pytest.raises(ValueError, match="run_name '../../../victim' is not a valid folder name"):
        main(args)
    assert not (tmp_path / "victim").exists() and not (tmp_path / "deep").exists()


def test_the_sweep_leaves_files_it_did_not_write(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("download.part", "notes.version_3.part", "best.ckpt.part", "best.json.version_0.part"):
        (folder / name).write_bytes(b"x")
    removed = sorted(p.name for p in sweep(folder))
    assert removed == ["best.ckpt.part", "best.json.version_0.part"]
    assert (folder / "download.part").exists() and (folder / "notes.version_3.part").exists()
