"""``python -m segmentation.report WORK_DIR [WORK_DIR ...] [--csv FILE]``: Table 3 style summary.

For each work dir of ``python -m segmentation.train``: the run, its method's tag, the number of
trainable conv layers, the backward FLOPs and activation memory of one image at the config's
crop size from the cost model (the config's method applied to a freshly built model, as the
runner applies it), and the last validation mIoU / mAcc / aAcc from ``vis_data/scalars.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Optional, Sequence

from gradfilt.cost import format_bytes, format_flops

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


def _cost(cfg) -> tuple[str, int, int, int]:
    """(method tag, trainable convs, backward FLOPs, activation bytes) per image of the configured method."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from gradfilt.cost import estimate_configured

    from .runner import apply_method, example_input

    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    method = apply_method(model, cfg)  # the run's own set-up, outside a run
    size = tuple(example_input(cfg).shape[2:])
    report = method.cost(model, size) if method is not None else estimate_configured(model, size)
    convs = sum(layer.type == "conv" for layer in report.layers)
    return (method.tag if method else "all layers"), convs, report.backward_flops, report.activation_bytes


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
        tag, layers, flops, nbytes = _cost(cfg)
        rows.append({"run": Path(work_dir).name, "config": configs[0].stem, "method": tag, "trainable_convs": layers,
                     "backward_flops": flops, "activation_bytes": nbytes, **_last_metrics(Path(work_dir))})
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
    print("| run | method | trainable convs | backward FLOPs | memory | mIoU | mAcc | aAcc |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        metrics = " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in ("mIoU", "mAcc", "aAcc"))
        print(f"| {r['run']} | {r['method']} | {r['trainable_convs']} | {format_flops(r['backward_flops'])} | "
              f"{format_bytes(r['activation_bytes'])} | {metrics} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
