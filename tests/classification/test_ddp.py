"""Classification with DistributedDataParallel on 2 CPU processes (gloo): the method is applied on
every rank before DDP is built, frozen parameters stay bit-identical, trained ones change and are
identical across ranks after every step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "configs" / "classification"


@pytest.mark.slow
def test_ddp_two_cpu_processes(fmnist_root, tmp_path):
    out = tmp_path / "digests"
    out.mkdir()
    method = tmp_path / "method.yaml"
    method.write_text(f"model:\n  method:\n    class_path: helpers.param_digest.RecordingFilter\n"
                      f"    init_args: {{out_dir: {out}, layers: 2, patch_size: 2}}\n")
    files = [CFG / "base.yaml", CFG / "models" / "resnet18.yaml", CFG / "datasets" / "fmnist.yaml",
             CFG / "schedules" / "fmnist_finetune.yaml", method]
    cmd = [sys.executable, "-m", "classification", "fit", *(a for f in files for a in ("--config", str(f))),
           "--data.data_dir", str(fmnist_root), "--data.split_file", str(tmp_path / "split.npy"),
           "--data.image_size", "32", "--data.subset", "192", "--data.batch_size", "16", "--data.num_workers", "0",
           "--runs_dir", str(tmp_path / "runs"), "--table", "ddp", "--trainer.max_epochs", "1",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = sorted({int(p.stem.split("_step")[1]) for p in out.glob("rank0_step*.json")})
    assert len(steps) >= 3 and steps == sorted({int(p.stem.split("_step")[1]) for p in out.glob("rank1_step*.json")})
    runs = {(r, s): json.loads((out / f"rank{r}_step{s}.json").read_text()) for r in (0, 1) for s in steps}
    first, last = runs[0, steps[0]], runs[0, steps[-1]]
    trainable = set(first["trainable"])
    assert trainable == {"layer4.1.conv1.weight", "layer4.1.conv1.bias", "layer4.1.conv2.weight",
                         "layer4.1.conv2.bias", "fc.weight", "fc.bias"}
    for s in steps:
        assert runs[0, s]["params"] == runs[1, s]["params"]  # every parameter identical across ranks
        assert runs[0, s]["grads"] == runs[1, s]["grads"] and set(runs[0, s]["grads"]) == trainable  # all-reduced
    for name, digest in first["params"].items():
        if name in trainable:
            assert last["params"][name] != digest, name  # trained
        else:
            assert last["params"][name] == digest, name  # frozen: bit-identical
    assert (tmp_path / "runs" / "ddp" / "resnet18" / "fmnist" / "R2-2L" / "best.ckpt").is_file()
