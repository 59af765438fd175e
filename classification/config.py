"""A run's resolved config without running it: what ``cost`` and ``search`` start from."""

from __future__ import annotations

import warnings
from typing import Sequence

from jsonargparse import Namespace

from .data import ClassificationData
from .lightning_cli import ClassificationCLI
from .module import ClassificationModule, calibration_batches, method_of

__all__ = ["resolve_config", "configured_model"]


class _ParseOnlyCLI(ClassificationCLI):
    def instantiate_classes(self) -> None:  # keep the parsed (and linked) config, build nothing
        pass


def resolve_config(args: Sequence[str]) -> Namespace:
    """The resolved config of ``--config A.yaml [--config B.yaml ...] [--key value ...]`` (no subcommand).

    Nothing is instantiated: no data is read and no weights are loaded. Used by
    ``python -m classification cost``.

    Args:
        args: command-line style arguments.
    """
    with warnings.catch_warnings():  # the arguments come from cost / search, not from sys.argv: nothing to warn of
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within")
        return _ParseOnlyCLI(ClassificationModule, ClassificationData, args=list(args), run=False,
                             seed_everything_default=0, auto_configure_optimizers=False).config


def configured_model(config: Namespace) -> ClassificationModule:
    """The module of a resolved config, set up as training would set it up (fused BN, filters,
    freezing) but with random weights: ``weights`` and ``init_from`` change no shape or cost. A method
    that calibrates (and so chooses its layers from the weights and the data) gets the configured
    weights and its batches from the configured data, as ``fit`` would give them.

    Args:
        config: the result of :func:`resolve_config`.
    """
    model_args = config.model.as_dict()
    if method_of(model_args.get("method")).calibration_batches == 0:
        return ClassificationModule(**{**model_args, "weights": None, "init_from": None})
    module = ClassificationModule(**model_args)
    data = ClassificationData(**config.data.as_dict())
    data.setup("fit")
    module.set_up_method(calibration_batches(data.train_dataloader(), module.method.calibration_batches))
    return module
