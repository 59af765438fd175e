"""``python -m segmentation.train CONFIG [--work-dir DIR] [--resume] [--cfg-options k=v ...] [--launcher pytorch]``.

A thin wrapper of mmengine's Runner (distributed runs: ``torchrun --nproc-per-node N -m
segmentation.train CONFIG --launcher pytorch``; without CUDA the processes train on CPU with the
gloo backend): installs the mmcv-lite stand-in (segmentation.compat), loads the config, applies
``--cfg-options``, defaults ``work_dir`` to ``work_dirs/<config name>`` and trains with the
config's runner (``MethodRunner`` for gradfilt's configs, which applies the training method).
``--resume`` continues from the work dir's newest checkpoint (mmengine's ``last_checkpoint``;
without one it starts from the beginning, as mmengine does, and says so in the log).
Logs: text log and TensorBoard under the work dir.
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Optional, Sequence

from .compat import install

__all__ = ["load_config", "build_runner", "main"]


def load_config(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                launcher: str = "none", resume: bool = False):
    """The mmengine Config of a run, with the wrapper's defaults applied.

    Args:
        config: path of an mmseg-style config file.
        work_dir: output folder; default ``work_dirs/<config file stem>``.
        cfg_options: dotted-key overrides (``--cfg-options``).
        launcher: none, pytorch, slurm or mpi (mmengine's launchers).
        resume: continue from the work dir's newest checkpoint.
    """
    install()
    from mmengine.config import Config

    if not Path(config).is_file():
        raise FileNotFoundError(f"no config file at {config}")
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(config).stem)
    cfg.launcher = launcher
    if resume:
        cfg.resume = True
    if cfg.get("visualizer") is not None:  # a process-wide singleton by name: one per run, so logs go to this run
        cfg.visualizer.name = f"visualizer-{uuid.uuid4().hex[:12]}"
    return cfg


def build_runner(cfg):
    """mmengine Runner from a config (mmseg's registry scope).

    With ``--launcher pytorch`` on a machine without CUDA, the process group is started here with
    the gloo backend (mmengine's own start would call ``torch.cuda.set_device``).
    """
    import torch
    import torch.distributed as dist
    from mmengine.registry import RUNNERS, init_default_scope
    from mmengine.runner import Runner

    if cfg.launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")  # torchrun's env:// variables
    if "runner_type" not in cfg:
        return Runner.from_cfg(cfg)
    init_default_scope(cfg.get("default_scope", "mmseg"))  # MethodRunner is found in mmseg's registry
    return RUNNERS.build(cfg)


def parse_args(argv: Optional[Sequence[str]], description: str, extra=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="mmseg-style config file")
    if extra is not None:
        extra(parser)
    parser.add_argument("--work-dir", help="output folder (default work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys: k=v ...")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None):
    """Train; returns the runner."""
    args = parse_args(argv, __doc__.split("\n\n")[0], lambda p: p.add_argument(
        "--resume", action="store_true", help="continue from the work dir's newest checkpoint"))
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher, args.resume)
    from .runner import configured_method  # after load_config: compat.install() runs before mmseg is imported

    configured_method(cfg)  # a bad method or layer_list key fails here, before the runner makes its work dir
    runner = build_runner(cfg)
    runner.train()
    return runner


if __name__ == "__main__":
    main()
