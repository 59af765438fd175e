"""``python -m classification {fit,validate,test} --config A.yaml [--config B.yaml ...] [--key value ...]``.

LightningCLI over :class:`ClassificationModule` and :class:`ClassificationData`: their typed
``__init__`` signatures are the schema (unknown keys are errors), ``data.dataset`` fills
``model.num_classes`` and ``data.image_size`` fills ``model.image_size``. Unless
``trainer.logger`` is set, each run logs to TensorBoard under
``<runs_dir>/<table>/<arch>/<dataset>/<run_name or strategy>/version_N`` where the resolved
``config.yaml`` is saved too, and the best checkpoint (by Val/Acc) is copied to
``<runs_dir>/<table>/<arch>/<dataset>/<run_name or strategy>/best.ckpt`` for the next stage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from jsonargparse import Namespace

from .data import ClassificationData, num_classes_of
from .module import ClassificationModule, strategy_tag

__all__ = ["ClassificationCLI", "ExportBest", "main", "run_dir", "resolve_config", "configured_model"]


class ExportBest(Callback):
    """Copy the best checkpoint of a fit to a fixed path (atomically) when the fit ends.

    Args:
        path: destination, e.g. runs/<table>/<arch>/<dataset>/pretrain/best.ckpt.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or getattr(ckpt, "last_model_path", "")
        if not best or not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".ckpt.part")
        os.close(fd)
        try:
            shutil.copyfile(best, tmp)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        print(f"best checkpoint ({ckpt.monitor}={float(ckpt.best_model_score or 0):.4f}): {self.path}")


def run_dir(runs_dir: str, table: str, arch: str, dataset: str, name: str) -> Path:
    """``<runs_dir>/<table>/<arch>/<dataset>/<name>``, the folder of one strategy's runs."""
    return Path(runs_dir) / table / arch / dataset / name


class ClassificationCLI(LightningCLI):
    """LightningCLI with the run-folder convention, linked arguments and best-checkpoint export."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--table", type=str, default="misc", help="experiment group, e.g. table2, table11")
        parser.add_argument("--runs_dir", type=str, default="runs", help="root of the TensorBoard logs")
        parser.add_argument("--run_name", type=Optional[str], default=None,
                            help="run folder name; default: the strategy tag (e.g. R2-2L)")
        parser.link_arguments("data.dataset", "model.num_classes", compute_fn=num_classes_of, apply_on="parse")
        parser.link_arguments("data.image_size", "model.image_size", apply_on="parse")

    def _run_folder(self) -> Path:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        m = cfg.model
        name = cfg.run_name or strategy_tag(m.trainable_layers, m.patch_size, m.filter_install, m.freeze)
        return run_dir(cfg.runs_dir, cfg.table, m.arch, cfg.data.dataset, name)

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        folder = self._run_folder()
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(save_dir=str(folder.parent), name=folder.name,
                                                 default_hp_metric=False)
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(ExportBest(str(folder / "best.ckpt")))
        return trainer


def main(args: Optional[Sequence[str]] = None, run: bool = True) -> ClassificationCLI:
    """Entry point (``python -m classification``); ``args`` replaces sys.argv[1:] when given.

    Args:
        args: command-line arguments; None reads sys.argv.
        run: run the subcommand (False: only parse and instantiate, ``args`` without a subcommand).
    """
    checkpoint = ModelCheckpoint(monitor="Val/Acc", mode="max", filename="best-{epoch}", save_last=True)
    cli = ClassificationCLI(
        ClassificationModule,
        ClassificationData,
        args=args,
        run=run,
        seed_everything_default=0,
        trainer_defaults={"callbacks": [checkpoint]},
        auto_configure_optimizers=False,
    )
    return cli


class _ParseOnlyCLI(ClassificationCLI):
    def instantiate_classes(self) -> None:  # keep the parsed (and linked) config, build nothing
        pass


def resolve_config(args: Sequence[str]) -> Namespace:
    """The resolved config of ``--config A.yaml [--config B.yaml ...] [--key value ...]`` (no subcommand).

    Nothing is instantiated: no data is read and no weights are loaded. Used by
    ``python -m gradfilt.cost --config ...``.

    Args:
        args: command-line style arguments.
    """
    return _ParseOnlyCLI(ClassificationModule, ClassificationData, args=list(args), run=False,
                         seed_everything_default=0, auto_configure_optimizers=False).config


def configured_model(config: Namespace) -> ClassificationModule:
    """The module of a resolved config, set up as training would set it up (fused BN, filters,
    freezing) but with random weights: ``weights`` and ``init_from`` change no shape or cost.

    Args:
        config: the result of :func:`resolve_config`.
    """
    return ClassificationModule(**{**config.model.as_dict(), "weights": None, "init_from": None})
