"""``python -m segmentation.report WORK_DIR [WORK_DIR ...] [--csv FILE]``: Table 3 style summary.

For each work dir of ``python -m segmentation.train``: the strategy (config name), the number
of trainable conv layers, the backward FLOPs of one image at the config's crop size from the
cost model (the config's GradientFilterHook / FreezeLayersHook applied to a freshly built
model), and the last validation mIoU / mAcc / aAcc from ``vis_data/scalars.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Optional, Sequence

from torch import Tensor, nn

from gradfilt.cost import format_flops

from . import compat

__all__ = ["summarize", "main"]


def _last_metrics(work_dir: Path) -> dict:
    metrics: dict = {}
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            if "mIoU" in record:
                metrics = {k: record[k] for k in ("mIoU", "mAcc", "aAcc")}
    return metrics


class _TensorMode(nn.Module):
    """An mmseg segmentor called like a plain network (``mode='tensor'``), for the cost model's trace."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: Tensor) -> Tensor:
        return self.segmentor(x, mode="tensor")


def _cost(cfg) -> tuple[int, int]:
    """(trainable convs, backward FLOPs per image) of the configured strategy."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import HOOKS, MODELS

    from gradfilt.cost import estimate_configured

    from . import hooks  # noqa: F401  (registers the hooks)

    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    for hook in cfg.get("custom_hooks", []):  # the run's own set-up, outside a run
        built = HOOKS.build(hook)
        if hasattr(built, "apply"):
            built.apply(model)
    size = tuple(cfg.get("crop_size", (512, 512)))
    report = estimate_configured(_TensorMode(model), size)
    return sum(layer.type == "conv" for layer in report.layers), report.backward_flops


def summarize(work_dirs: Sequence[Path]) -> list[dict]:
    """One row per work dir that holds a dumped config."""
    from mmengine.config import Config

    compat.install()
    rows = []
    for work_dir in work_dirs:
        configs = sorted(Path(work_dir).glob("*.py"))
        if not configs:
            continue
        cfg = Config.fromfile(str(configs[0]))
        layers, flops = _cost(cfg)
        rows.append({"run": Path(work_dir).name, "config": configs[0].stem, "trainable_convs": layers,
                     "backward_flops": flops, **_last_metrics(Path(work_dir))})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m segmentation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dirs", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = summarize(args.work_dirs)
    if not rows:
        parser.error(f"no work dirs with a dumped config among {[str(w) for w in args.work_dirs]}")
    print("| run | trainable convs | backward FLOPs | mIoU | mAcc | aAcc |\n|---|---|---|---|---|---|")
    for r in rows:
        metrics = " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in ("mIoU", "mAcc", "aAcc"))
        print(f"| {r['run']} | {r['trainable_convs']} | {format_flops(r['backward_flops'])} | {metrics} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
