"""``python -m classification search``: the budgeted configuration search (:mod:`gradfilt.search`) on a run's config.

    python -m classification search --config ... [overrides as for fit] [--last 8] [--patch-sizes 2 4 7]
        (--sample N | --budget memory=16KB|memory=R2-2L [--budget flops=8M] [--budget latency=30] ...)
        [--emp-alphas 0.25 0.5 0.75]
        [--latency-csv runs/latency/search/conv.csv] [--measured RUNS/<table>/<arch>/<dataset>]
        [--compare RUNS/<table>/<arch>/<dataset>] [--fixed vanilla-2L R2-2L ...] [--fidelity-batches 4]
        [--out DIR]

The network is built as ``fit`` builds it (``init_from`` weights, BN folded with ``fuse_bn``),
before any method. ``--sample N`` writes N method configs of sampled configurations to
``DIR/samples/<label>.yaml`` (replacing the YAML files there) for the few-sample predictor's
fine-tunes (run each with ``--run_name <label>``). With budgets, the search prints the chosen configuration next to the
fixed configurations of ``--fixed`` and writes ``DIR/method.yaml`` (a method config the CLI runs
as is: ``python -m classification fit ... --config DIR/method.yaml``), ``DIR/search.json`` and
``DIR/pareto.png``. A budget's value may be a fixed configuration's tag (``memory=R2-2L``: that
configuration's activation memory). ``--measured`` points at the sample runs (the folder holding
one folder per label, each with ``best.json``) and fits the predictor on them; without it the
prediction is the training-free proxy. ``--emp-alphas`` adds error-map pruning's kept share as a
knob (EMP on every trained dense conv; labels end in ``-a<alpha>``; ``--sample N`` then adds N/3
configurations trained with EMP at an alpha drawn from the list).
``--compare`` points at full-protocol runs named by tag
(vanilla-2L, R2-4L, ..., or a label) whose accuracy the table and plot show as measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import yaml

from gradfilt import search as gs
from gradfilt.cost import format_bytes, format_flops

from .config import resolve_config
from .data import ClassificationData
from .module import calibration_batches, network

__all__ = ["search_main", "measured_accuracies", "plain_model"]

DEFAULT_FIXED = ["vanilla-2L", "R2-2L", "R4-2L", "vanilla-4L", "R2-4L", "R4-4L"]


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classification search", add_help=True,
                                     description="budgeted configuration search; other arguments go to the run's "
                                                 "config parser as for fit")
    parser.add_argument("--last", type=int, default=8, help="the search covers the last K main-path convs")
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[2, 4, 7])
    parser.add_argument("--budget", action="append", default=[], help="memory=16KB, flops=8M, latency=30 (ms), "
                        "or metric=<tag> (that fixed configuration's cost); all must hold")
    parser.add_argument("--sample", type=int, default=None, help="write N sampled configurations and stop")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--latency-csv", type=Path, default=None,
                        help="conv.csv of `python -m latency` on this network's layers, for latency budgets")
    parser.add_argument("--measured", type=Path, default=None, help="folder of the sample fine-tunes")
    parser.add_argument("--compare", type=Path, default=None, help="folder of full-protocol runs named by tag")
    parser.add_argument("--fixed", nargs="+", default=DEFAULT_FIXED, help="fixed configurations shown beside")
    parser.add_argument("--fidelity-batches", type=int, default=4, help="training batches for the proxy")
    parser.add_argument("--out", type=Path, default=Path("runs/search"))
    parser.add_argument("--no-check", action="store_true", help="skip the exhaustive check")
    parser.add_argument("--emp-alphas", type=float, nargs="+", default=[],
                        help="also search error-map pruning's kept share alpha over these values in (0, 1) "
                             "(EMP on every trained dense conv; 1, no pruning, is always searched)")
    return parser


def plain_model(config) -> tuple[torch.nn.Module, int]:
    """The network of a resolved config as ``fit`` builds it before its method (weights, BN folded); its input size."""
    m = config.model.as_dict()
    model = network(m["arch"], m["num_classes"], m["image_size"], m.get("weights"), m.get("init_from"),
                    m.get("fuse_bn", False))
    return model.eval(), m["image_size"]


def measured_accuracies(folder: Path, space: gs.SearchSpace) -> dict[tuple[tuple[int, ...], float], float]:
    """(configuration, EMP alpha) -> best validation accuracy of the runs in ``folder`` (one folder per tag
    or label)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no run folder {folder}")
    found = {}
    for run in sorted(folder.iterdir()):
        key = gs.run_from_tag(space, run.name)
        best = run / "best.json"
        if key is not None and best.is_file():
            found[key] = float(json.loads(best.read_text())["score"])
    return found


def _run_of(space: gs.SearchSpace, tag: str, tables: dict, what: str) -> tuple[tuple[int, ...], float]:
    run = gs.run_from_tag(space, tag)
    if run is None:
        raise SystemExit(f"{what} {tag!r}: not a configuration of this space (vanilla-NL, R<r>-NL, emp<alpha>-NL"
                         f"[-R<r>] with N <= {len(space.layers)} and r in {list(space.patch_sizes)}, or a label)")
    if run[1] not in tables:
        raise SystemExit(f"{what} {tag!r}: EMP alpha {run[1]:g} is not searched; add it to --emp-alphas")
    return run


def _budgets(texts: Sequence[str], tables: dict) -> dict[str, float]:
    budgets = {}
    space = tables[1.0].space
    for text in texts:
        name, _, value = text.partition("=")
        if gs.run_from_tag(space, value) is not None and name in gs.BUDGETS:
            config, alpha = _run_of(space, value, tables, "--budget")
            metric = gs.BUDGETS[name]
            if metric not in tables[alpha].metrics:
                raise ValueError(f"budget {text!r}: no {metric} table (give --latency-csv for latency budgets)")
            budgets[metric] = float(tables[alpha].evaluate(config)[metric][0])
        else:
            metric, number = gs.parse_budget(text)
            budgets[metric] = number
    return budgets


def _write_samples(space: gs.SearchSpace, count: int, seed: int, emp_alphas: Sequence[float], folder: Path
                   ) -> list[str]:
    """Method configs of ``count`` sampled configurations (and a third as many again with error-map pruning at
    an alpha drawn from ``emp_alphas``) as ``folder/<label>.yaml``, replacing the YAML files there; the labels."""
    rng = np.random.default_rng(seed)
    runs = [(c, 1.0) for c in gs.sample_configs(space, count, seed)]  # a bad count fails here, before any change
    if emp_alphas:
        runs += [(c, float(rng.choice(emp_alphas))) for c in gs.sample_configs(space, -(-count // 3), seed + 1)]
    files = {}
    for config, alpha in runs:
        label = space.label(config, alpha)
        text = yaml.safe_dump({"model": {"method": gs.method_config(space, config, alpha)}}, sort_keys=False)
        files[label] = f"# searched layers {', '.join(space.layers)}: {label}\n{text}"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.yaml"):  # the folder holds one sampling: the launcher runs every file in it
        stale.unlink()
    for label, text in files.items():
        (folder / f"{label}.yaml").write_text(text)
    return list(files)


def _cost_cells(costs: dict) -> str:
    cells = [format_bytes(int(costs["activation_bytes"])), format_flops(int(costs["backward_flops"]))]
    cells.append(f"{costs['latency_ms']:.1f}" if "latency_ms" in costs else "-")
    return " | ".join(cells)


def _parsed(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], Optional[gs.LatencyModel]]:
    """The search's own arguments (checked), the run's config arguments, and the latency model of
    ``--latency-csv``; everything is checked before any work."""
    args, rest = _arguments().parse_known_args(list(argv))
    if args.sample is None and not args.budget:
        raise SystemExit("python -m classification search: give --sample N or at least one --budget")
    if args.fidelity_batches < 1:
        raise SystemExit(f"--fidelity-batches must be >= 1, got {args.fidelity_batches}")
    latency = None
    if args.latency_csv is not None:  # read before any work: a bad file fails first
        if not args.latency_csv.is_file():
            raise SystemExit(f"--latency-csv: no file {args.latency_csv} (write it with python -m latency --out DIR)")
        with open(args.latency_csv, newline="") as f:
            try:
                latency = gs.LatencyModel.fit(list(csv.DictReader(f)))
            except (KeyError, ValueError, TypeError) as err:
                raise SystemExit(f"--latency-csv {args.latency_csv}: not the conv.csv of python -m latency ({err})"
                                 ) from None
    if any(not 0 < a < 1 for a in args.emp_alphas):
        raise SystemExit(f"--emp-alphas are kept shares in (0, 1), got {args.emp_alphas}")
    for text in args.budget:
        _check_budget(text, args)
    for what, folder in (("--compare", args.compare), ("--measured", args.measured)):
        if folder is not None and not folder.is_dir():
            raise SystemExit(f"{what}: no folder {folder} (the run folders of one table: "
                             f"runs/<table>/<arch>/<dataset>)")
    return args, rest, latency


def _check_budget(text: str, args: argparse.Namespace) -> None:
    """A budget's syntax, its patch size among ``--patch-sizes`` and a latency budget's ``--latency-csv``, before
    any work (what a tag or a label costs is known once the tables are built)."""
    name, _, value = text.partition("=")
    tag = gs.RUN_TAG.fullmatch(value)
    if name not in gs.BUDGETS or tag is None and not re.fullmatch(r"[_V0-9]+(?:-a[0-9.]+)?", value):
        gs.parse_budget(text)  # a number with a unit; raises naming the valid forms
    size = tag and (tag.group(2) or tag.group(5))
    if size and int(size) not in args.patch_sizes:
        raise ValueError(f"budget {text!r}: R{size} is not among --patch-sizes {args.patch_sizes}")
    if gs.BUDGETS[name] == "latency_ms" and args.latency_csv is None:
        raise ValueError(f"budget {text!r}: a latency budget needs --latency-csv (python -m latency's conv.csv)")


def _predictor(model: torch.nn.Module, space: gs.SearchSpace, config, args: argparse.Namespace,
               alphas: list[float], tables: dict) -> tuple[gs.AccuracyPredictor, dict, np.ndarray]:
    """The accuracy predictor: gradient fidelity on ``--fidelity-batches`` training batches, fitted on the
    ``--measured`` runs when given; with the measured samples and the exact-gradient fidelity."""
    data = ClassificationData(**config.data.as_dict())
    data.setup("fit")
    batches = calibration_batches(data.train_dataloader(), args.fidelity_batches)
    fidelities = gs.gradient_fidelities(model, space, batches, alphas)
    predictor = gs.AccuracyPredictor(fidelities[1.0], by_alpha={a: fidelities[a] for a in alphas[1:]})
    samples = {}
    if args.measured is not None:
        samples = {k: v for k, v in measured_accuracies(args.measured, space).items() if k[1] in tables}
        predictor = predictor.fit([c for c, _ in samples], list(samples.values()), alphas=[a for _, a in samples])
    return predictor, samples, fidelities[1.0]


def _compared(space: gs.SearchSpace, rows: list[tuple], tables: dict, budgets: dict,
              predictor: gs.AccuracyPredictor, measured: dict) -> tuple[list[str], list[dict]]:
    """The comparison table's Markdown lines and its rows as data, for (name, configuration, alpha) rows."""
    table = ["| configuration | label | fits | predicted | measured | memory | backward FLOPs | latency ms |",
             "|---|---|---|---|---|---|---|---|"]
    summary_rows = []
    for name, config_, alpha in rows:
        costs = {m: float(v[0]) for m, v in tables[alpha].evaluate(config_).items()}
        fits = bool(gs.CostTables.fits(costs, budgets))
        pred = float(predictor.predict([config_], [alpha])[0])
        acc = measured.get((tuple(config_), alpha))
        label = space.label(config_, alpha)
        shown = name if name != "searched" else f"searched ({gs.method_tag(space, config_, alpha)})"
        table.append(f"| {shown} | {label} | {'yes' if fits else 'no'} | {pred:.4f} | "
                     f"{'-' if acc is None else f'{100 * acc:.1f}'} | {_cost_cells(costs)} |")
        summary_rows.append({"name": name, "label": label, "fits": fits, "predicted": pred, "measured": acc,
                             **costs})
    return table, summary_rows


def _print_search(space: gs.SearchSpace, alphas: list[float], latency: Optional[gs.LatencyModel],
                  predictor: gs.AccuracyPredictor, budgets: dict, result: gs.SearchResult, no_check: bool) -> None:
    """What was searched and how: the space, the models, the budgets, SHGO and the exhaustive check."""
    print(f"search space: {len(space.layers)} layers ({', '.join(space.layers)}) x {{frozen, vanilla, "
          f"{', '.join(f'R{r}' for r in space.patch_sizes)}}} = {space.size:,} configurations"
          + (f", x EMP alpha in {{{', '.join(f'{a:g}' for a in alphas)}}}" if len(alphas) > 1 else ""))
    if latency is not None:
        print(f"latency model (batch {latency.batch_size}): {latency.describe()}")
    if predictor.coef is not None:
        print(f"accuracy predictor: ridge on [proxy, depth] from {predictor.samples} fine-tunes; leave-one-out "
              f"Spearman {predictor.cv_spearman:.2f} (proxy alone {predictor.proxy_spearman:.2f}), "
              f"mean abs error {100 * predictor.cv_mae:.2f} points")
    else:
        print("accuracy predictor: the training-free proxy (sum of gradient fidelity over trained layers)")
    print("budgets: " + ", ".join(gs.budget_text(m, v) for m, v in budgets.items()))
    shgo_label = (result.exhaustive or {}).get("shgo_label", result.label)
    print(f"SHGO search: {shgo_label} in {result.seconds:.2f} s ({result.evaluated:,} configurations costed)")
    check = result.exhaustive
    if check is None and not no_check:
        print(f"exhaustive check skipped: {space.size:,} configurations per alpha (more than "
              f"{gs.EXHAUSTIVE_LIMIT:,})")
    if check is not None:
        print(f"exhaustive check: {check['label']} over {check['configurations']:,} configurations in "
              f"{check['seconds']:.2f} s: " + ("same predicted accuracy" if "shgo_label" not in check else
                                                f"better than SHGO's {check['shgo_label']} "
                                                f"({check['shgo_predicted']:.4f}); using it"))


def search_main(argv: Sequence[str]) -> dict:
    """``python -m classification search ...`` (see the module docstring).

    Args:
        argv: the arguments after ``search``.

    Returns:
        What ``search.json`` holds (the samples written, with ``--sample``).
    """
    args, rest, latency = _parsed(argv)
    alphas = sorted({1.0, *args.emp_alphas}, reverse=True)
    config = resolve_config(rest)
    model, size = plain_model(config)
    space = gs.search_space(model, torch.zeros(1, 3, size, size), args.last, args.patch_sizes)
    if args.sample is not None:
        labels = _write_samples(space, args.sample, args.seed, alphas[1:], args.out / "samples")
        print("\n".join(labels))
        return {"samples": labels, "layers": list(space.layers)}

    tables = {a: gs.cost_tables(model, space, size, latency=latency, alpha=a) for a in alphas}
    budgets = _budgets(args.budget, tables)
    floor = {m: float(v[0]) for m, v in tables[1.0].evaluate(np.zeros((1, len(space.layers)), np.int64)).items()}
    if not gs.CostTables.fits(floor, budgets):  # nothing but the classifier trains: the cheapest configuration
        raise SystemExit("no configuration fits the budgets: training the classifier alone costs "
                         + ", ".join(gs.budget_text(m, floor[m]) for m in budgets))
    fixed = [(tag, *_run_of(space, tag, tables, "--fixed")) for tag in args.fixed]
    predictor, samples, fidelity = _predictor(model, space, config, args, alphas, tables)
    result = gs.search_knob(tables, predictor, budgets, check=not args.no_check)
    measured = measured_accuracies(args.compare, space) if args.compare is not None else {}

    method = gs.method_config(space, result.config, result.alpha)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "method.yaml").write_text(
        f"# python -m classification search, budgets {budgets}: {result.label} over {', '.join(space.layers)}\n"
        + yaml.safe_dump({"model": {"method": method}}, sort_keys=False))
    table, summary_rows = _compared(space, [("searched", result.config, result.alpha)] + fixed, tables, budgets,
                                    predictor, measured)
    _print_search(space, alphas, latency, predictor, budgets, result, args.no_check)
    print("\n".join(table))
    print(f"wrote {args.out / 'method.yaml'}")
    summary = {"layers": list(space.layers), "patch_sizes": list(space.patch_sizes), "budgets": budgets,
               "result": {**result.__dict__, "config": list(result.config)}, "rows": summary_rows,
               "samples": {space.label(c, a): acc for (c, a), acc in samples.items()},
               "predictor": {"coef": None if predictor.coef is None else predictor.coef.tolist(),
                             "cv_spearman": predictor.cv_spearman, "proxy_spearman": predictor.proxy_spearman,
                             "cv_mae": predictor.cv_mae},
               "fidelity": fidelity.tolist()}
    (args.out / "search.json").write_text(json.dumps(summary, indent=1))
    _plot(args.out / "pareto.png", tables[1.0], predictor, summary_rows, budgets)
    print(f"wrote {args.out / 'search.json'} and {args.out / 'pareto.png'}")
    return summary


def _plot(path: Path, tables: gs.CostTables, predictor: gs.AccuracyPredictor, rows: list[dict],
          budgets: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = gs.pareto_front(tables, predictor) if tables.space.size <= gs.EXHAUSTIVE_LIMIT else []
    has_measured = any(r["measured"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if has_measured else 1, figsize=(11 if has_measured else 6, 4.2), squeeze=False)
    ax = axes[0, 0]
    if front:  # (a space too large to enumerate shows its configurations only)
        ax.step([max(c, 1) / 1024 for c, _, _ in front], [p for _, p, _ in front], where="post", color="0.4",
                label="predicted Pareto front")
    _points(ax, rows, "predicted", budgets)
    ax.set_xscale("log")
    positive = [c for c, _, _ in front if c > 0]
    if positive:  # the classifier-only configuration keeps nothing: start the axis at the first that keeps some
        ax.set_xlim(left=min(positive) / 1024 / 2)
    ax.set_xlabel("activation memory per image (KB)")
    ax.set_ylabel("predicted accuracy (short fine-tunes)" if predictor.coef is not None
                  else "proxy (sum of gradient fidelity)")
    ax.legend(fontsize=7)
    if has_measured:
        ax = axes[0, 1]
        _points(ax, [dict(r, measured=100 * r["measured"]) for r in rows if r["measured"] is not None], "measured",
                budgets)
        ax.set_xscale("log")
        ax.set_xlabel("activation memory per image (KB)")
        ax.set_ylabel("measured val accuracy % (full protocol)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _points(ax, rows: list[dict], value: str, budgets: dict) -> None:
    """One marker per row at (its memory in KB, ``row[value]``), the searched one a star, each labelled; the
    memory budget as a dotted line."""
    for r in rows:
        searched = r["name"] == "searched"
        x = max(r["activation_bytes"], 1) / 1024
        ax.scatter(x, r[value], marker="*" if searched else "o", s=120 if searched else 40)
        ax.annotate(f"searched {r['label']}" if searched else r["name"], (x, r[value]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if "activation_bytes" in budgets:
        ax.axvline(budgets["activation_bytes"] / 1024, color="red", linestyle=":", label="memory budget")
