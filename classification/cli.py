"""``python -m classification {fit,validate,test,cost,search} --config A.yaml [--config B.yaml ...] [--key value ...]``.

``fit`` / ``validate`` / ``test`` run through LightningCLI (:mod:`classification.lightning_cli`); ``cost``
(:mod:`classification.cost_cli`) and ``search`` (:mod:`classification.search_cli`) take the same configs and
overrides and print a method's cost or run the budgeted configuration search.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from .cost_cli import cost_main
from .lightning_cli import ClassificationCLI, lightning_main
from .search_cli import search_main

__all__ = ["COMMANDS", "main"]

# the subcommands that are not Trainer methods: name -> (entry point, one line of help)
COMMANDS: dict[str, tuple[Callable[[Sequence[str]], dict], str]] = {
    "cost": (cost_main, "the configured method's backward FLOPs and memory (--json, --measure)"),
    "search": (search_main, "the budgeted configuration search (--budget, --sample)"),
}


def main(args: Optional[Sequence[str]] = None, run: bool = True) -> Optional[ClassificationCLI]:
    """Entry point (``python -m classification``); ``args`` replaces sys.argv[1:] when given.

    Args:
        args: command-line arguments; None reads sys.argv.
        run: run the subcommand (False: only parse and instantiate, ``args`` without a subcommand).

    Returns:
        The LightningCLI of ``fit`` / ``validate`` / ``test`` (None for ``cost`` and ``search``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if run and argv[:1] and argv[0] in COMMANDS:
        COMMANDS[argv[0]][0](argv[1:])
        return None
    if run and argv[:1] in (["-h"], ["--help"]):
        print("python -m classification {fit,validate,test,cost,search} ...; also:")
        print("\n".join(f"  {name:<8} {text} (python -m classification {name} --help)"
                        for name, (_, text) in COMMANDS.items()))
    return lightning_main(args, run)
