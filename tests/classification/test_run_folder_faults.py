"""Kill test: fits SIGKILLed at random points never leave a torn checkpoint, a wrong export or stale parts."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from classification.rundir import LOCK_NAME

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "configs" / "classification"
TRIALS = 5


def _fit(fmnist_root, tmp, *extra):
    files = [CFG / "base.yaml", CFG / "models" / "resnet18.yaml", CFG / "datasets" / "fmnist.yaml",
             CFG / "schedules" / "fmnist_pretrain.yaml"]
    return [sys.executable, "-m", "classification", "fit", *(a for f in files for a in ("--config", str(f))),
            "--data.data_dir", str(fmnist_root), "--data.split_file", str(tmp / "split.npy"),
            "--data.image_size", "32", "--data.subset", "160", "--data.batch_size", "32", "--data.num_workers", "0",
            "--runs_dir", str(tmp / "runs"), "--table", "t", "--trainer.max_epochs", "4",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(cmd):
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _check_loadable(folder: Path) -> dict[Path, str]:
    """Every checkpoint under ``folder`` loads as a complete Lightning checkpoint; returns their digests."""
    digests = {}
    for ckpt in folder.rglob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        assert "state_dict" in state and "epoch" in state, ckpt
        digests[ckpt] = _digest(ckpt)
    return digests


def _start(cmd, folder: Path):
    """Start a fit in its own process group; return it once it has reserved its version folder."""
    versions = set(folder.glob("version_*"))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    while not set(folder.glob("version_*")) - versions and proc.poll() is None:
        time.sleep(0.02)
    return proc, versions


@pytest.mark.slow
def test_sigkill_at_random_points(fmnist_root, tmp_path):
    folder = tmp_path / "runs" / "t" / "resnet18" / "fmnist" / "pretrain"
    proc, _ = _start(_fit(fmnist_root, tmp_path), folder)
    start = time.monotonic()
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    span = time.monotonic() - start  # from reserving a version to exiting: training, checkpoints, export
    rng = random.Random(0)
    killed = []
    for trial in range(TRIALS):
        before = _digest(folder / "best.ckpt")
        proc, versions = _start(_fit(fmnist_root, tmp_path), folder)
        delay = rng.uniform(0, span)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        new = set(folder.glob("version_*")) - versions
        killed.append((f"{delay:.1f} of {span:.1f} s", sorted(p.name for v in new for p in v.rglob("*") if p.is_file())))

        unfinished = [f for v in new if not any(v.glob("checkpoints/*.ckpt")) for f in v.glob("events.out.*")]
        digests = _check_loadable(folder)  # no torn checkpoint anywhere
        exported = digests[folder / "best.ckpt"]
        fit_bests = {d for p, d in digests.items() if p.name.startswith("best-")}
        assert exported == before or exported in fit_bests, killed[-1]  # the previous export or the new one

        _run(_fit(fmnist_root, tmp_path, "--ckpt_path", "last"))  # the next run of the stage resumes
        assert not list(folder.rglob("*.part")), killed[-1]
        assert not list(folder.rglob(LOCK_NAME + "*")), killed[-1]
        # a killed fit without a checkpoint is gone (its version number may serve the next run)
        assert not any(f.exists() for f in unfinished), killed[-1]
        digests = _check_loadable(folder)
        source = Path(json.loads((folder / "best.json").read_text())["checkpoint"])
        assert digests[folder / "best.ckpt"] == digests[source]
    print("kill points and what each killed fit had written:", *killed, sep="\n")


@pytest.mark.slow
def test_sigterm_exits_non_zero_and_keeps_the_checkpoints(fmnist_root, tmp_path):
    """Lightning ends the loop cleanly on SIGTERM; the process must still say it was stopped."""
    folder = tmp_path / "runs" / "t" / "resnet18" / "fmnist" / "pretrain"
    proc, _ = _start(_fit(fmnist_root, tmp_path, "--trainer.max_epochs", "50"), folder)
    while not list(folder.glob("version_*/checkpoints/*.ckpt")) and proc.poll() is None:
        time.sleep(0.05)  # one epoch done: something to keep
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err
    assert list(folder.glob("version_*/checkpoints/*.ckpt"))
