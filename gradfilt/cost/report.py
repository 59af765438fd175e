"""Cost reports as text: FLOPs and bytes with units, the per-layer Markdown table."""

from __future__ import annotations

from typing import Optional, Sequence

from .counts import CostReport

__all__ = ["format_flops", "format_bytes", "print_report"]

def _units(value: float, names: Sequence[str], base: int) -> str:
    for name in names[:-1]:
        if value < base:
            return f"{value:.2f}{name}"
        value /= base
    return f"{value:.2f}{names[-1]}"


def format_flops(flops: int) -> str:
    return _units(flops, ["", "K", "M", "G", "T"], 1000)


def format_bytes(nbytes: int) -> str:
    return _units(nbytes, ["B", "KB", "MB", "GB"], 1024)


def print_report(report: CostReport, measured: Optional[dict[str, dict[str, int]]] = None,
                 notes: str = "") -> None:
    """Print a cost report as a Markdown table and its totals (and measured bytes, if given).

    Args:
        report: what :func:`estimate` / :meth:`gradfilt.methods.Method.cost` returned.
        measured: setup name -> :func:`measure` result.
        notes: the method's own summary (:meth:`gradfilt.methods.Method.summary`), printed after the totals.
    """
    print("| layer | type | input | output | patch | grad_x | backward FLOPs | memory |\n"
          "|---|---|---|---|---|---|---|---|")
    for layer in report.layers:
        print(f"| {layer.name} | {layer.type} | {'x'.join(map(str, layer.in_shape))} | "
              f"{'x'.join(map(str, layer.out_shape))} | {layer.patch_size or '-'} | "
              f"{'yes' if layer.needs_grad_input else 'no'} | {format_flops(layer.flops)} | "
              f"{format_bytes(layer.activation_bytes)} |")
    overhead = (f"overhead FLOPs (outside the main network): {format_flops(report.overhead_flops)}  "
                if report.overhead_flops else "")
    print(f"\ntotal backward FLOPs: {format_flops(report.backward_flops)}  "
          f"forward FLOPs (every conv and linear layer): {format_flops(report.forward_flops)}  {overhead}"
          f"activation memory (conv inputs): {format_bytes(report.activation_bytes)}  "
          f"trainable parameters: {report.trainable_params:,}  batch {report.batch_size}")
    if report.uncounted:
        print(f"not in the paper's convention (trainable normalization layers, see --measure): "
              f"{len(report.uncounted)} layers, e.g. {', '.join(report.uncounted[:3])}")
    if notes:
        print(notes)
    for setup, values in (measured or {}).items():
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in values.items())
        print(f"measured saved for backward ({setup}): {parts}")
