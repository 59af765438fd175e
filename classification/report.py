"""``python -m classification.report RUNS [RUNS ...] [--csv FILE] [--png FILE] [--all-versions]``.

Reads the TensorBoard event files and resolved ``config.yaml`` of every run under the given
folders and prints the paper-style table (method, #layers, patch size, best validation
accuracy, test accuracy when a test ran, backward FLOPs and activation memory from the cost
model, the bytes autograd really kept in one step of one image, the trainable parameters and the
*step memory*: the kept conv inputs plus one float32 gradient per trainable parameter, the
quantity dynamic sparse update's budget bounds, and, where a method drops instances, the mean
share of the training instances the main network saw, *kept %*) as Markdown; for runs that
logged them, the *training FLOPs* per instance of the data (the kept share of the main
network's forward + backward plus a method's overhead, e.g. an instance filter's network:
:func:`gradfilt.cost.training_flops`), the computation *saved* against full BP on every layer
of the same network, and the median wall-clock of an epoch's training steps. Writes the table
as CSV, and plots accuracy against backward FLOPs (log scale, like the paper's Figure 4),
activation memory, step memory and training FLOPs. A row is one model: a fit and the
evaluations of its checkpoints; ``--mean-over-seeds`` folds runs named ``<name>-s<seed>``.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
from pathlib import Path
from typing import Optional, Sequence

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradfilt.cost import FLOAT_BYTES, CostReport, format_bytes, format_flops, training_flops

from .module import method_of

__all__ = ["collect", "mean_over_seeds", "markdown", "write_csv", "plot", "main"]

COLUMNS = ["table", "model", "dataset", "method", "layers", "patch_size", "val_acc", "test_acc", "test_ckpt",
           "backward_flops", "activation_bytes", "measured_bytes", "trainable_params", "step_bytes", "kept_fraction",
           "training_flops", "computation_saved", "step_seconds", "seeds", "val_acc_std", "run"]
MEASURED = ("val_acc", "test_acc", "backward_flops", "activation_bytes", "measured_bytes", "trainable_params",
            "step_bytes", "kept_fraction", "training_flops", "computation_saved", "step_seconds")
SEED_SUFFIX = re.compile(r"-s(\d+)$")  # run names of one configuration under several seeds: <name>-s<seed>


def _scalars(run: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _version(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _attached_fit(ckpt_path: Optional[str], fits: list[Path]) -> Optional[Path]:
    """The fit version whose model an evaluation (validate / test) loaded, if it is in this folder."""
    if not ckpt_path:
        return None
    ckpt = Path(ckpt_path).resolve()
    return next((fit for fit in fits if fit.resolve() in ckpt.parents), None)


def collect(roots: Sequence[Path], all_versions: bool = False) -> list[dict]:
    """One row per model: the newest fit of each run folder (runs/<table>/<arch>/<dataset>/<method tag or
    run name>), with the test accuracy of the evaluations that loaded that fit's checkpoints.

    A run folder holds ``version_N`` subfolders (config.yaml + TensorBoard events): fits (they log
    Train/ scalars) and evaluations (``validate`` / ``test``). An evaluation belongs to the fit whose
    checkpoint it loaded (a path under that fit's version folder; ``python -m classification``
    records a ``best.ckpt`` it was given as the checkpoint that file was copied from);
    ``test_ckpt`` names that checkpoint. An evaluation of
    anything else (no checkpoint, another folder's) is a row of its own. A test of an older fit
    never lands in a newer fit's row.

    Args:
        roots: folders searched recursively.
        all_versions: one row per fit (every version_N), not only the newest of each folder.
    """
    versions = sorted({cfg.parent for root in roots for cfg in Path(root).rglob("config.yaml")
                       if any(cfg.parent.glob("events.out.tfevents.*"))}, key=lambda p: (p.parent, _version(p)))
    folders: dict[Path, list[Path]] = {}
    for v in versions:
        folders.setdefault(v.parent, []).append(v)
    rows = []
    for members in folders.values():
        scalars = {v: _scalars(v) for v in members}
        configs = {v: yaml.safe_load((v / "config.yaml").read_text()) for v in members}
        fits = [v for v in members if any(tag.startswith("Train/") for tag in scalars[v])]
        groups: dict[Path, list[Path]] = {fit: [] for fit in fits}
        for v in members:
            if v not in groups:
                owner = _attached_fit(configs[v].get("ckpt_path"), fits)
                groups.setdefault(owner if owner is not None else v, []).append(v)
        keep = fits if all_versions else fits[-1:]
        for key, evals in groups.items():
            if key in fits and key not in keep:
                continue
            rows.append(_row(key, evals, scalars, configs))
    return sorted(rows, key=_order)


def _row(key: Path, evals: list[Path], scalars: dict, configs: dict) -> dict:
    """One model's row: the scalars of ``key`` (a fit, or an evaluation standing alone), tests from ``evals``."""
    own = scalars[key]
    cfg = configs[key]
    model, data = cfg["model"], cfg["data"]
    fields = method_of(model.get("method")).fields()
    tests = [(v, scalars[v]["Test/Acc"][-1]) for v in [key, *evals] if scalars[v].get("Test/Acc")]

    def best(tag: str) -> Optional[float]:
        return max(own[tag]) if own.get(tag) else None

    memory, params = best("Cost/ActivationBytes"), best("Cost/TrainableParams")
    kept = (sum(own["Method/KeptFraction_epoch"]) / len(own["Method/KeptFraction_epoch"])
            if own.get("Method/KeptFraction_epoch") else None)
    training = reference = None
    if own.get("Cost/ReferenceFLOPs") and own.get("Cost/ForwardFLOPs"):
        report = CostReport(backward_flops=best("Cost/BackwardFLOPs"), activation_bytes=0, batch_size=1,
                            patch_size=None, forward_flops=best("Cost/ForwardFLOPs"),
                            overhead_flops=best("Cost/OverheadFLOPs") or 0)
        training, reference = training_flops(report, 1.0 if kept is None else kept), best("Cost/ReferenceFLOPs")
    seconds = own.get("Time/TrainStepSeconds")
    return {
        "table": cfg.get("table"),
        "model": model["arch"],
        "dataset": data["dataset"],
        **fields,
        "method": cfg.get("run_name") or fields["method"],
        "val_acc": best("Val/Acc"),
        "test_acc": tests[-1][1] if tests else None,
        "test_ckpt": configs[tests[-1][0]].get("ckpt_path") if tests else None,
        "backward_flops": best("Cost/BackwardFLOPs"),
        "activation_bytes": memory,
        "measured_bytes": best("Cost/MeasuredBytes"),
        "trainable_params": params,
        # kept conv inputs + one float32 gradient per trainable parameter
        "step_bytes": None if memory is None or params is None else memory + FLOAT_BYTES * params,
        # share of the training instances the main network saw (methods that drop instances log it)
        "kept_fraction": kept,
        # forward + backward (+ a method's overhead) per instance of the data, and its saving over full BP
        "training_flops": training,
        "computation_saved": None if training is None else 1 - training / reference,
        # median wall-clock of an epoch's training steps
        "step_seconds": statistics.median(seconds) if seconds else None,
        "seeds": None,
        "val_acc_std": None,
        "run": str(key),
    }


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """Rows of one configuration under several seeds (run names ``<name>-s<seed>`` in one table, model and
    dataset) folded into one row named ``<name>``: numbers averaged, ``seeds`` counted, ``val_acc_std``
    the sample standard deviation of the best validation accuracies. Other rows pass unchanged."""
    out, groups = [], {}
    for r in rows:
        name = SEED_SUFFIX.sub("", str(r["method"]))
        if name == r["method"]:  # not a seeded run
            out.append(r)
        else:
            groups.setdefault((r["table"], r["model"], r["dataset"], name), []).append(r)
    for (*_, name), members in groups.items():
        row = dict(members[0], method=name, seeds=len(members), run=" ".join(m["run"] for m in members),
                   test_ckpt=None)
        for column in MEASURED:
            values = [m[column] for m in members]
            row[column] = None if None in values else statistics.fmean(values)
        accs = [m["val_acc"] for m in members if m["val_acc"] is not None]
        row["val_acc_std"] = statistics.stdev(accs) if len(accs) > 1 else None
        out.append(row)
    return sorted(out, key=_order)


def _order(row: dict) -> tuple:
    """Group by table/model/dataset; stages first, then by #layers and patch size (vanilla first)."""
    layers, patch = row["layers"], row["patch_size"]
    stage = {"pretrain": 0, "no-finetune": 1}.get(row["method"], 2)
    return (str(row["table"]), row["model"], row["dataset"], stage,
            str(layers) if not isinstance(layers, int) else f"{layers:04d}", patch if isinstance(patch, int) else 0)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (accuracies in %, FLOPs and bytes in the paper's units)."""
    # columns that only some runs have: the kept share where a method drops instances; the training
    # computation and epoch time where the run logged them
    optional = (("seeds", "seeds", str),
                ("val acc std", "val_acc_std", _pct),
                ("kept %", "kept_fraction", _pct),
                ("training FLOPs", "training_flops", lambda v: format_flops(int(v))),
                ("saved %", "computation_saved", _pct),
                ("s / epoch", "step_seconds", lambda v: f"{v:.1f}"))
    extra = [(title, key, fmt) for title, key, fmt in optional if any(r[key] is not None for r in rows)]
    lines = ["| model | dataset | method | #layers | patch | val acc % | test acc % | backward FLOPs | memory "
             "| measured | trainable | step memory |" + "".join(f" {title} |" for title, _, _ in extra),
             "|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra)]
    for r in rows:
        flops = "-" if r["backward_flops"] is None else format_flops(int(r["backward_flops"]))
        mem, measured, step = ("-" if r[k] is None else format_bytes(int(r[k]))
                               for k in ("activation_bytes", "measured_bytes", "step_bytes"))
        params = r["trainable_params"]
        lines.append(f"| {r['model']} | {r['dataset']} | {r['method']} | {r['layers']} | "
                     f"{r['patch_size'] if r['patch_size'] is not None else '-'} | {_pct(r['val_acc'])} | "
                     f"{_pct(r['test_acc'])} | {flops} | {mem} | {measured} | "
                     f"{'-' if params is None else f'{int(params):,}'} | {step} |"
                     + "".join(f" {'-' if r[key] is None else fmt(r[key])} |" for _, key, fmt in extra))
    tested = [r for r in rows if r["test_ckpt"]]
    if tested:
        lines += ["", "test acc % is of: " + "; ".join(f"{r['method']} {r['test_ckpt']}" for r in tested)]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    """Write the rows (raw numbers) to ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against backward FLOPs, activation memory and step memory (log x, the cost model's
    numbers) and, where runs logged it, training FLOPs per instance; one series per model/dataset,
    points labelled by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("backward_flops", "backward FLOPs per image (cost model)"),
              ("activation_bytes", "activation memory per image, bytes (cost model)"),
              ("step_bytes", "step memory, bytes (activation memory + 4 B per trainable parameter)")]
    if any(r["training_flops"] for r in rows):
        panels.append(("training_flops", "training FLOPs per instance (kept share x (forward + backward) + overhead)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.3 * len(panels), 4.8), sharey=True)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["val_acc"] is not None and r["backward_flops"]:
            groups.setdefault((r["model"], r["dataset"]), []).append(r)
    for ax, (key, label) in zip(axes, panels):
        for (model, dataset), points in sorted(groups.items()):
            points = [p for p in points if p[key]]
            xs = [p[key] for p in points]
            ys = [100 * (p["test_acc"] if p["test_acc"] is not None else p["val_acc"]) for p in points]
            ax.scatter(xs, ys, label=f"{model} / {dataset}")
            for p, x, y in zip(points, xs, ys):
                ax.annotate(p["method"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("accuracy % (test if run, else best validation)")
    if groups:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m classification.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="run folders, e.g. runs/table11")
    parser.add_argument("--csv", type=Path, default=None, help="default: <first root>/report.csv")
    parser.add_argument("--png", type=Path, default=None, help="default: <first root>/report.png")
    parser.add_argument("--all-versions", action="store_true", help="one row per fit, not only the newest per folder")
    parser.add_argument("--mean-over-seeds", action="store_true",
                        help="fold runs named <name>-s<seed> into one row per <name>: means, and the spread of val acc")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.roots if not r.is_dir()]
    if missing:
        parser.error(f"no such folder(s): {missing}")
    rows = collect(args.roots, args.all_versions)
    if not rows:
        parser.error(f"no runs (config.yaml + TensorBoard events) under {[str(r) for r in args.roots]}")
    if args.mean_over_seeds:
        rows = mean_over_seeds(rows)
    print(markdown(rows))
    csv_path = args.csv or args.roots[0] / "report.csv"
    png_path = args.png or args.roots[0] / "report.png"
    write_csv(rows, csv_path)
    plot(rows, png_path)
    print(f"\nwrote {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
