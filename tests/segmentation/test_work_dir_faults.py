"""Kill test for mmengine work dirs: SIGKILLed training never leaves a torn checkpoint or a stale part."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segmentation.runner import repair_work_dir

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "segmentation" / "fmnist_seg" / "deeplabv3_r18-d8_1xb8-300_fmnistseg-64x64.py"
TRIALS = 5
ITERS = 12


def _train(fmnist_root, tmp, *extra):
    opts = {"train_cfg.max_iters": ITERS, "train_cfg.val_interval": ITERS, "default_hooks.checkpoint.interval": 2,
            "param_scheduler.0.end": ITERS, "train_dataloader.batch_size": 4, "val_dataloader.batch_size": 4}
    for loader in ("train_dataloader", "val_dataloader"):
        opts.update({f"{loader}.dataset.data_root": str(tmp / "data"), f"{loader}.dataset.fmnist_root": str(fmnist_root),
                     f"{loader}.dataset.n_train": 16, f"{loader}.dataset.n_val": 8})
    return [sys.executable, "-m", "segmentation.train", str(CONFIG), "--work-dir", str(tmp / "work"), *extra,
            "--cfg-options", *(f"{k}={v}" for k, v in opts.items())]


def _start(cmd, work: Path):
    """Start training in its own process group; return it once its runner has made its log folder."""
    logs = set(work.glob("2*")) if work.is_dir() else set()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    while proc.poll() is None and not (work.is_dir() and set(work.glob("2*")) - logs):
        time.sleep(0.02)
    return proc


def _check_loadable(work: Path) -> None:
    for ckpt in work.glob("*.pth"):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        assert {"state_dict", "meta", "optimizer"} <= set(state), ckpt


@pytest.mark.slow
def test_sigkill_at_random_points(fmnist_root, tmp_path):
    work = tmp_path / "work"
    proc = _start(_train(fmnist_root, tmp_path), work)
    start = time.monotonic()
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    span = time.monotonic() - start
    rng = random.Random(0)
    killed = []
    for _ in range(TRIALS):
        before = (work / "last_checkpoint").read_text()
        proc = _start(_train(fmnist_root, tmp_path), work)  # a fresh run of the stage, killed somewhere
        delay = rng.uniform(0, span)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed.append((f"{delay:.1f} of {span:.1f} s", sorted(p.name for p in work.iterdir() if p.is_file())))

        _check_loadable(work)  # every checkpoint on disk is complete
        pointer = (work / "last_checkpoint").read_text().strip()
        assert pointer == before or Path(pointer).parent == work and Path(pointer).is_file(), killed[-1]

        done = subprocess.run(_train(fmnist_root, tmp_path, "--resume"), cwd=REPO, capture_output=True, text=True,
                              timeout=600)  # the next run of the stage continues and completes
        assert done.returncode == 0, done.stderr[-3000:]
        assert not list(work.glob("*.part")), killed[-1]
        _check_loadable(work)
        assert (work / "last_checkpoint").read_text().strip() == str(work / f"iter_{ITERS}.pth")
    print("kill points and the work dir's files after each kill:", *killed, sep="\n")


def test_repair_mends_a_torn_pointer_and_removes_parts(tmp_path):
    for n in (2, 10, 4):
        torch.save({"n": n}, tmp_path / f"iter_{n}.pth")
    (tmp_path / "iter_12.pth.part").write_bytes(b"half")
    (tmp_path / "last_checkpoint").write_text("")  # killed while mmengine rewrote it
    changed = repair_work_dir(str(tmp_path))
    assert len(changed) == 2 and not (tmp_path / "iter_12.pth.part").exists()
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_10.pth")
    assert repair_work_dir(str(tmp_path)) == []  # a sound work dir is left as it is
    for ckpt in tmp_path.glob("iter_*.pth"):
        ckpt.unlink()
    repair_work_dir(str(tmp_path))
    assert not (tmp_path / "last_checkpoint").exists()  # names nothing that exists, and nothing is left
