"""``python -m segmentation.test CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options ...]``: mIoU / mAcc.

Loads the checkpoint into the configured model (on torch >= 2.6 through mmengine's loader,
see segmentation.compat) and runs the config's test loop and evaluator.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .train import build_runner, load_config, parse_args

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Evaluate; returns the metrics dict (mIoU, mAcc, aAcc)."""
    args = parse_args(argv, __doc__.split("\n\n")[0], lambda p: p.add_argument("checkpoint"))
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    return build_runner(cfg).test()


if __name__ == "__main__":
    main()
