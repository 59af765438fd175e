"""``python -m classification cost --config ... [overrides as for fit] [--json] [--measure]``: the method's cost
table in the paper's convention (``--json``: one JSON object; ``--measure``: also the bytes autograd keeps in
one real step)."""

from __future__ import annotations

import json
from typing import Sequence

import torch

from gradfilt.cost import format_flops, measure, print_report, training_flops

from .config import configured_model, resolve_config

__all__ = ["cost_main"]


def cost_main(argv: Sequence[str]) -> dict:
    """``python -m classification cost --config ... [overrides as for fit] [--json] [--measure]``.

    Sets the configured network up as ``fit`` would (random weights: ``weights`` and ``init_from``
    change no shape or cost) and prints the method's cost in the paper's convention (batch 1).

    Args:
        argv: the arguments after ``cost``.

    Returns:
        The printed report as a dict (``measured_bytes`` added with ``--measure``).
    """
    own = {"--json", "--measure"}
    flags = {a for a in argv if a in own}
    config = resolve_config([a for a in argv if a not in own])
    module = configured_model(config)
    report = module.cost
    result = report.to_dict() | {"method": module.method.tag, "training_flops": training_flops(report),
                                 "reference_flops": module.reference_flops}
    if "--measure" in flags:
        module.train()  # the run's train/eval flags (frozen BN stays in eval mode)
        size = module.hparams.image_size
        result["measured_bytes"] = {"as configured": measure(module.model, torch.randn(2, 3, size, size))}
    if "--json" in flags:
        print(json.dumps(result))
    else:
        print(f"method {module.method.tag} on {module.hparams.arch}, {module.hparams.image_size}x"
              f"{module.hparams.image_size}, {module.hparams.num_classes} classes")
        print_report(report, result.get("measured_bytes"))
        saved = 1 - result["training_flops"] / result["reference_flops"]
        print(f"training FLOPs per instance, every instance trained on: {format_flops(result['training_flops'])} "
              f"(full BP on every layer: {format_flops(result['reference_flops'])}, {100 * saved:.1f} % saved)")
    return result
