"""``python -m latency``: the filtered conv backward against torch's, and whole fine-tuning steps.

    python -m latency [--device cpu|cuda] [--batch 32] [--cases table10|resnet18|mobilenet_v2|FILE ...]
                      [--patch-sizes 2 4] [--repeats N] [--min-time S] [--malloc default|heap|hugepages] [--out DIR]
    python -m latency --mode step [--archs mobilenet_v2 resnet18] [--layers 2 4] [--methods A.yaml B.yaml ...]
                      [--fuse-bn]
    python -m latency --mode parts [--cases table10 ...] [--patch-sizes 2 4] [--repeats N] [--min-time S] [--malloc ...]

The resnet18 / mobilenet_v2 case sets are the networks' distinct conv geometries at ``--image-size``
(default 224). A FILE case list is a CSV with columns name,c_in,c_out,h,w[,kernel,stride,padding,dilation,groups].
``--mode step`` sets the network up with each method config (the classification YAML files,
default ``configs/classification/methods/{vanilla,r2,r4}.yaml``) at each ``--layers`` N (methods
without ``layers``, such as sparse update and TinyTL, as configured, once per arch with the first N)
and compares every row with the first method's; each row also has the method's backward FLOPs (cost model) and the bytes
autograd kept in one step. ``--fuse-bn`` folds BatchNorm first (sparse update and TinyTL need it).
Writes ``conv.csv`` / ``step.csv`` / ``parts.csv`` and ``conv.png`` (speedup and normalized memory
per case and patch size, like the paper's Figure 6) to ``--out`` and prints a Markdown summary.
``--mode parts`` times each step of the filtered backward alone next to the whole op (ungrouped
stride-1 cases only; others are skipped with a note).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from tqdm import tqdm

from gradfilt.cost import format_flops
from gradfilt.models import ARCHS, TIMM_PREFIX
from gradfilt.ops import native

from .bench import (PARTS, THP_ENV, THP_SETTING, ConvCase, bench_case, bench_parts, bench_steps, huge_pages_mode,
                    keep_freed_memory, method_config, model_cases, parts_supported, table10_cases, takes_layers,
                    write_csv)

METHODS_DIR = Path(__file__).resolve().parents[1] / "configs" / "classification" / "methods"
DEFAULT_METHODS = [METHODS_DIR / f"{name}.yaml" for name in ("vanilla", "r2_per_layer", "r2", "r4_per_layer", "r4")]

CASE_SETS = {"table10": lambda size: table10_cases(), "resnet18": lambda size: model_cases("resnet18", size),
             "mobilenet_v2": lambda size: model_cases("mobilenet_v2", size)}


def _load_cases(spec: str, image_size: int = 224) -> list[ConvCase]:
    if spec in CASE_SETS:
        return CASE_SETS[spec](image_size)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"unknown case set {spec!r}: valid sets are {sorted(CASE_SETS)} or a CSV file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), set(reader.fieldnames or ())
    fields = [f.name for f in dataclasses.fields(ConvCase)]
    required = [f.name for f in dataclasses.fields(ConvCase) if f.default is dataclasses.MISSING]
    if not rows or not set(required) <= columns or not columns <= set(fields):
        raise ValueError(f"{spec}: a case file is a CSV with the columns {required} (and optionally "
                         f"{[f for f in fields if f not in required]}) and one row per case; it has the columns "
                         f"{sorted(columns)} and {len(rows)} rows")
    try:
        return [ConvCase(row.pop("name"), **{k: int(v) for k, v in row.items() if v != ""}) for row in rows]
    except ValueError as err:
        raise ValueError(f"{spec}: every value but the name is an integer ({err})") from None


def _kb(nbytes: float) -> str:
    return f"{nbytes / 1024:,.0f}"


def conv_markdown(rows: list[dict]) -> str:
    """Markdown table of conv rows plus per-patch-size medians."""
    lines = ["| case | r | torch ms | filtered ms | speedup | grid ms | grid speedup | chain ms | chain speedup | "
             "GEMM ms | chain of GEMM | copy ms | floor | of floor | saved KB torch | saved KB filt | mem ratio | "
             "FLOPs ratio |", "|---" * 18 + "|"]
    for r in rows:
        grid = (f"{r['grid_ms']:.2f} | {r['grid_speedup']:.1f}x | {r['chain_ms']:.2f} | {r['chain_speedup']:.1f}x"
                if not math.isnan(r["grid_ms"]) else "- | - | - | -")
        of_gemm = "-" if math.isnan(r["chain_ms"]) else f"{100 * r['chain_of_gemm']:.0f}%"
        lines.append(f"| {r['case']} | {r['patch_size']} | {r['torch_ms']:.1f} | {r['filtered_ms']:.2f} | "
                     f"{r['speedup']:.1f}x | {grid} | {r['gemm_ms']:.2f} | {of_gemm} | {r['copy_ms']:.2f} | "
                     f"{r['floor_speedup']:.1f}x | "
                     f"{100 * r['speedup'] / r['floor_speedup']:.0f}% | {_kb(r['torch_saved_bytes'])} | "
                     f"{_kb(r['filtered_saved_bytes'])} | {r['memory_ratio']:.4f} | {r['flops_ratio']:.0f}x |")
    lines.append("")
    for size in sorted({r["patch_size"] for r in rows}):
        sub = [r for r in rows if r["patch_size"] == size]
        lines.append(f"R{size}: median speedup {statistics.median(r['speedup'] for r in sub):.1f}x "
                     f"(min {min(r['speedup'] for r in sub):.1f}x, max {max(r['speedup'] for r in sub):.1f}x), "
                     f"median floor {statistics.median(r['floor_speedup'] for r in sub):.1f}x, "
                     f"median memory ratio {statistics.median(r['memory_ratio'] for r in sub):.4f}")
        grid = [r for r in sub if not math.isnan(r["grid_ms"])]
        for key, what in (("grid_speedup", "grad_x on the patch grid"), ("chain_speedup", "a layer inside a chain")):
            if grid:
                values = [r[key] for r in grid]
                lines.append(f"R{size}, {what}: median speedup {statistics.median(values):.1f}x "
                             f"(min {min(values):.1f}x, max {max(values):.1f}x, {len(values)} cases)")
        if grid:
            share = statistics.median(r["chain_of_gemm"] for r in grid)
            lines.append(f"R{size}, a layer inside a chain: median {share:.0%} of the GEMM floor (the two patch-grid "
                         f"GEMMs alone)")
    return "\n".join(lines)


def _layers(value: str) -> Union[int, str]:
    if value == "all":
        return value
    try:
        layers = int(value)
    except ValueError:
        layers = -1
    if layers < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0 or 'all', got {value!r}")
    return layers


def _ratio(x: float) -> str:
    return f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def step_markdown(rows: list[dict]) -> str:
    """Markdown table of step rows, speedups against the first method's row of the same arch/layers."""
    lines = ["| arch | layers | method | forward ms | backward ms | SGD ms | step ms | step speedup | "
             "backward speedup | backward FLOPs | saved MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(b for b in rows if b["arch"] == r["arch"] and b["set"] == r["set"])
        lines.append(f"| {r['arch']} | {r['layers']} | {r['method']} | {r['forward_ms']:.0f} | "
                     f"{r['backward_ms']:.1f} | {r['sgd_ms']:.1f} | {r['step_ms']:.0f} | "
                     f"{base['step_ms'] / r['step_ms']:.2f}x | {_ratio(base['backward_ms'] / r['backward_ms'])} | "
                     f"{format_flops(r['backward_flops'])} | {r['saved_bytes'] / 2**20:.2f} |")
    return "\n".join(lines)


def parts_markdown(rows: list[dict]) -> str:
    """Markdown table of parts rows: each step of the filtered backward alone, their sum and the rest."""
    lines = ["| case | r | torch ms | filtered ms | " + " | ".join(f"{p} ms" for p in PARTS)
             + " | parts ms | rest ms | speedup | at parts ms |", "|---" * (len(PARTS) + 8) + "|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['patch_size']} | {r['torch_ms']:.1f} | {r['filtered_ms']:.2f} | "
                     + " | ".join(f"{r[f'{p} ms']:.2f}" for p in PARTS)
                     + f" | {r['parts_ms']:.2f} | {r['rest_ms']:.2f} | {r['speedup']:.1f}x"
                     + f" | {r['parts_speedup']:.1f}x |")
    return "\n".join(lines)


def plot_conv(rows: list[dict], path: Path) -> None:
    """Speedup (log) and normalized memory per case and patch size, like the paper's Figure 6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    sizes = sorted({r["patch_size"] for r in rows})
    fig, (ax_s, ax_m) = plt.subplots(2, 1, figsize=(max(6, 0.9 * len(cases)), 7), sharex=True)
    width = 0.8 / len(sizes)
    for i, size in enumerate(sizes):
        by_case = {r["case"]: r for r in rows if r["patch_size"] == size}
        xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(cases))]
        ax_s.bar(xs, [by_case[c]["speedup"] for c in cases], width, label=f"R{size}")
        ax_s.scatter(xs, [by_case[c]["floor_speedup"] for c in cases], marker="_", s=200, color="black",
                     label="floor (GEMM + copy)" if i == 0 else None, zorder=3)
        ax_m.bar(xs, [by_case[c]["memory_ratio"] for c in cases], width, label=f"R{size}")
    ax_s.set_yscale("log")
    ax_s.set_ylim(bottom=1)
    ax_s.set_ylabel("backward speedup over torch")
    ax_m.set_yscale("log")
    ax_m.set_ylabel("saved memory / torch's")
    ax_m.set_xticks(range(len(cases)), cases, rotation=45, ha="right", fontsize=7)
    for ax in (ax_s, ax_m):
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["conv", "step", "parts"], default="conv")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cases", nargs="+", default=["table10", "resnet18", "mobilenet_v2"],
                        help=f"case sets ({', '.join(CASE_SETS)}) or CSV files")
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement, at least")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="--mode conv / parts: seconds of timed calls per measurement, at least "
                             "(steadier fast cases)")
    parser.add_argument("--malloc", choices=["default", "heap", "hugepages"], default="default",
                        help="heap: glibc reuses freed blocks instead of mapping fresh pages for each large "
                             "tensor; hugepages: torch maps large tensors on transparent huge pages (runs in a "
                             f"child process with {THP_ENV}=1); both sides alike, see latency/README.md")
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet18"], help="--mode step networks")
    parser.add_argument("--layers", type=_layers, nargs="+", default=[2, 4],
                        help="--mode step: the methods' layers (the paper's #Layers, or all)")
    parser.add_argument("--methods", type=Path, nargs="+", default=DEFAULT_METHODS, metavar="YAML",
                        help="--mode step: method configs (classification YAML); the first is the baseline")
    parser.add_argument("--image-size", type=int, default=224,
                        help="input size of --mode step and of the resnet18 / mobilenet_v2 case sets")
    parser.add_argument("--fuse-bn", action="store_true",
                        help="--mode step: fold BatchNorm into the convs before each method is applied, as the "
                             "fine-tuning recipes do (needed by sparse_update.yaml and tinytl.yaml)")
    parser.add_argument("--out", type=Path, default=Path("runs/latency"))
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument error, before any work (exits with the usage)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch on this machine")
    if min(args.patch_sizes) < 1 or args.batch < 1 or args.repeats < 1:
        parser.error("--patch-sizes, --batch and --repeats must be >= 1")
    if args.min_time < 0:
        parser.error("--min-time must be >= 0")
    if args.image_size < 8:
        parser.error(f"--image-size must be >= 8 (pixels), got {args.image_size}")
    unknown = [a for a in args.archs if a not in ARCHS and not a.startswith(TIMM_PREFIX)]
    if unknown:
        parser.error(f"--archs: unknown {unknown}; valid: {sorted(ARCHS)} or {TIMM_PREFIX}<name>")
    if args.malloc == "heap":
        try:
            keep_freed_memory()
        except RuntimeError as err:
            parser.error(str(err))
    if args.malloc == "hugepages" and os.environ.get(THP_ENV) != "1":
        mode = huge_pages_mode()
        if mode not in ("always", "madvise"):
            parser.error(f"--malloc hugepages: the kernel's transparent huge pages are '{mode}' here "
                         f"({THP_SETTING}); they must be 'always' or 'madvise'")


def _steps(parser: argparse.ArgumentParser, args: argparse.Namespace, device: torch.device) -> None:
    """``--mode step``: whole fine-tuning steps of each method, per arch and depth."""
    try:
        methods = [method_config(path) for path in args.methods]
    except ValueError as err:
        parser.error(str(err))
    # a method without ``layers`` is the same set-up at every N: timed once per arch, with the first N
    jobs = [(a, n, methods if n == args.layers[0] else [m for i, m in enumerate(methods)
                                                        if i == 0 or takes_layers(m)])
            for a in args.archs for n in args.layers]
    rows = [row for a, n, these in tqdm(jobs, desc="steps")
            for row in bench_steps(a, n, these, args.batch, args.image_size, device, args.repeats, args.fuse_bn)]
    rows = [row | {"malloc": args.malloc} for row in rows]
    write_csv(rows, args.out / "step.csv")
    print(step_markdown(rows))
    print(f"\nwrote {args.out / 'step.csv'}")


def _parts(parser: argparse.ArgumentParser, args: argparse.Namespace, cases: list, device: torch.device) -> None:
    """``--mode parts``: the filtered backward's stages, timed one by one."""
    skipped = [c.name for c in cases if not parts_supported(c, args.patch_sizes)]
    cases = [c for c in cases if parts_supported(c, args.patch_sizes)]
    if not cases:
        parser.error("--mode parts needs ungrouped stride-1 cases whose kernel collapses at every --patch-sizes "
                     "(dilation < r); none of the given cases is one")
    if skipped:
        print(f"--mode parts skips {len(skipped)} grouped, strided or dilated cases: {', '.join(skipped)}",
              file=sys.stderr)
    rows = [row | {"malloc": args.malloc} for case in tqdm(cases, desc="cases")
            for row in bench_parts(case, args.batch, args.patch_sizes, device, args.repeats, args.min_time)]
    write_csv(rows, args.out / "parts.csv")
    print(parts_markdown(rows))
    print(f"\nwrote {args.out / 'parts.csv'}")


def _convs(args: argparse.Namespace, cases: list, device: torch.device) -> None:
    """``--mode conv``: the filtered conv backward against torch's, per case and patch size."""
    rows = []
    for case in tqdm(cases, desc="cases"):
        rows += bench_case(case, args.batch, args.patch_sizes, device, args.repeats, args.min_time)
    rows = [row | {"malloc": args.malloc} for row in rows]
    write_csv(rows, args.out / "conv.csv")
    plot_conv(rows, args.out / "conv.png")
    print(conv_markdown(rows))
    print(f"\nwrote {args.out / 'conv.csv'} and {args.out / 'conv.png'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``python -m latency``); ``argv`` replaces sys.argv[1:] when given."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if args.malloc == "hugepages" and os.environ.get(THP_ENV) != "1":
        # torch reads the variable once, at its first allocation: only a fresh process sees it
        child = [sys.executable, "-m", "latency", *(sys.argv[1:] if argv is None else argv)]
        return subprocess.call(child, env=os.environ | {THP_ENV: "1"})
    device = torch.device(args.device)
    cases = []
    if args.mode != "step":
        try:
            cases = [c for spec in args.cases for c in _load_cases(spec, args.image_size)]
        except (ValueError, TypeError) as err:
            parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    kernels = ("compiled (gradfilt.ops._kernels)" if native.available()
               else "pure PyTorch (gradfilt.ops._kernels not built, or GRADFILT_NO_KERNELS set)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, CPU passes: {kernels}, "
          f"malloc: {args.malloc}", file=sys.stderr)
    if args.mode == "step":
        _steps(parser, args, device)
    elif args.mode == "parts":
        _parts(parser, args, cases, device)
    else:
        _convs(args, cases, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
