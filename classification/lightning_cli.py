"""``python -m classification {fit,validate,test} --config A.yaml [--config B.yaml ...] [--key value ...]``.

LightningCLI over :class:`ClassificationModule` and :class:`ClassificationData`: their typed
``__init__`` signatures are the schema (unknown keys are errors), ``data.dataset`` fills
``model.num_classes`` and ``data.image_size`` fills ``model.image_size``. Unless
``trainer.logger`` is set, each run logs to TensorBoard under
``<runs_dir>/<table>/<arch>/<dataset>/<run_name or method tag>/version_N`` where the resolved
``config.yaml`` is saved too, and the best checkpoint (by Val/Acc) is copied to
``<runs_dir>/<table>/<arch>/<dataset>/<run_name or method tag>/best.ckpt`` for the next stage.
The ``cost`` and ``search`` subcommands (:mod:`classification.cost_cli`, :mod:`classification.search_cli`)
take the same configs through :func:`classification.config.resolve_config`; :mod:`classification.cli`
dispatches all five.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from jsonargparse import Namespace

from .data import ClassificationData, num_classes_of
from .module import ClassificationModule, method_of
from .rundir import (AtomicCheckpointIO, last_checkpoint, release_version, reserve_version, run_dir,
                     sweep, write_atomically)

__all__ = ["ClassificationCLI", "ExportBest", "lightning_main"]


_VERSION_ENV = "GRADFILT_RUN_VERSION"


class ExportBest(Callback):
    """Copy the best checkpoint of a fit to a fixed path (atomically) when the fit ends, and say in
    ``best.json`` beside it which version it came from. A kill leaves the previous export or the new
    one; the part file it may leave is removed when the next run of the folder starts
    (:func:`classification.rundir.sweep`).

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
        version = Path(best).parent.parent.name
        source = {"version": version, "checkpoint": str(best), "monitor": ckpt.monitor,
                  "score": float(ckpt.best_model_score or 0)}
        # the checkpoint first: best.json never names a fit best.ckpt is not from
        with open(best, "rb") as src:
            write_atomically(self.path, lambda f: shutil.copyfileobj(src, f),
                             part=self.path.with_name(f"{self.path.name}.{version}.part"))
        json_path = self.path.with_suffix(".json")
        write_atomically(json_path, lambda f: f.write(json.dumps(source).encode()),
                         part=json_path.with_name(f"{json_path.name}.{version}.part"))
        print(f"best checkpoint ({ckpt.monitor}={float(ckpt.best_model_score or 0):.4f}): {self.path}")


class ClassificationCLI(LightningCLI):
    """LightningCLI with the run-folder convention, linked arguments and best-checkpoint export.

    A run reserves its ``version_N`` folder when the trainer is built and gives it back when the
    command ends; a run that failed before saving any checkpoint leaves no folder behind.
    """

    CONFIG_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError)

    def __init__(self, *args, **kwargs) -> None:
        self._started = False  # the subcommand has begun: an error from now on is not the config's
        try:
            super().__init__(*args, **kwargs)
        except SIGTERMException:  # Lightning ends the loop cleanly and exits with code 0: a scheduler must see it
            self._end_version(failed=True)
            print("stopped by SIGTERM: exiting with code 143 (the checkpoints stay, to resume from)", file=sys.stderr)
            raise SystemExit(128 + signal.SIGTERM) from None
        except BaseException as err:
            self._end_version(failed=True)
            if isinstance(err, self.CONFIG_ERRORS) and not self._started:
                err.gradfilt_config_error = True  # python -m classification prints it as one line
            raise
        self._end_version(failed=False)

    def _start(self) -> None:
        self._started = True

    before_fit = before_validate = before_test = _start

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (``predict`` needs a predict_dataloader, which the data module has not)."""
        commands = LightningCLI.subcommands()
        commands.pop("predict", None)
        return commands

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--table", type=str, default="misc", help="experiment group, e.g. table2, table11")
        parser.add_argument("--runs_dir", type=str, default="runs", help="root of the TensorBoard logs")
        parser.add_argument("--run_name", type=Optional[str], default=None,
                            help="run folder name; default: the method's tag (e.g. R2-2L)")
        parser.link_arguments("data.dataset", "model.num_classes", compute_fn=num_classes_of, apply_on="parse")
        parser.link_arguments("data.image_size", "model.image_size", apply_on="parse")

    def _run_folder(self) -> Path:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        m = cfg.model
        method = m.method.as_dict() if isinstance(m.method, Namespace) else m.method
        name = cfg.run_name or method_of(method).tag
        return run_dir(cfg.runs_dir, cfg.table, m.arch, cfg.data.dataset, name)

    _reserved: Optional[Path] = None
    _lock: Optional[int] = None

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        folder = self._run_folder()
        trainer_cfg = (self.config_init[self.subcommand] if self.subcommand else self.config_init).get("trainer", {})
        if trainer_cfg.get("logger") in (None, True):
            running = self.subcommand is not None and not trainer_cfg.get("fast_dev_run")
            version = self._reserve_version(folder) if running else None
            kwargs["logger"] = TensorBoardLogger(save_dir=str(folder.parent), name=folder.name, version=version,
                                                 default_hp_metric=False)
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(folder)  # what Lightning writes without a logger stays in the run folder
        if not trainer_cfg.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]  # no torn checkpoint after a kill
        trainer = super().instantiate_trainer(**kwargs)  # a bad trainer option: __init__ gives the version back
        if not trainer.fast_dev_run:  # a smoke run never replaces the stage's exported checkpoint
            trainer.callbacks.append(ExportBest(str(folder / "best.ckpt")))
        return trainer

    def _reserve_version(self, folder: Path) -> Optional[int]:
        """Sweep what dead runs left in the folder, then create and lock ``version_N`` (the first free N),
        so runs started together never share one (:mod:`classification.rundir`).

        Processes a distributed launch starts later inherit the number (``GRADFILT_RUN_VERSION``); other
        ranks of an external launch (torchrun) leave the choice to Lightning.
        """
        if _VERSION_ENV in os.environ:
            return int(os.environ[_VERSION_ENV])
        if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
            return None
        sweep(folder)
        n, self._lock = reserve_version(folder)
        self._reserved = folder / f"version_{n}"
        os.environ[_VERSION_ENV] = str(n)
        return n

    def _end_version(self, failed: bool) -> None:
        """Release the reserved version (lock, ``GRADFILT_RUN_VERSION``); a run that failed before saving
        any checkpoint leaves no version folder behind (nor an empty run folder)."""
        os.environ.pop(_VERSION_ENV, None)
        version = self._reserved
        if version is None:
            return
        if self._lock is not None:
            release_version(version, self._lock)
            self._lock = None
        if failed and version.is_dir() and not any(version.glob("checkpoints/*.ckpt")):
            shutil.rmtree(version)
            if not any(version.parent.iterdir()):
                version.parent.rmdir()

    def before_instantiate_classes(self) -> None:
        """Load every checkpoint weights-only (a local file or a URL: a checkpoint that names code to run is
        refused, never run), resolve ``--ckpt_path last`` (the run folder's newest checkpoint) and an exported
        ``best.ckpt`` (the fit's own checkpoint it was copied from, recorded in config.yaml so the report knows
        which model an evaluation belongs to even after a later fit), before anything is built."""
        if self.subcommand is None:
            return
        cfg = self.config[self.subcommand]
        self._run_folder()  # a run name that would leave the runs folder fails here, before any folder is made
        if cfg.get("weights_only") is False:
            raise ValueError(f"{self.subcommand} --weights_only false: checkpoints are loaded weights-only here "
                             f"(a full unpickle runs whatever code the file names); leave --weights_only out")
        cfg["weights_only"] = True
        ckpt = cfg.get("ckpt_path")
        if ckpt == "last":
            cfg["ckpt_path"] = str(last_checkpoint(self._run_folder()))
            print(f"resuming from {cfg['ckpt_path']}")
        elif ckpt and Path(ckpt).name == "best.ckpt" and Path(ckpt).with_suffix(".json").is_file():
            source = Path(json.loads(Path(ckpt).with_suffix(".json").read_text())["checkpoint"])
            if source.is_file():
                cfg["ckpt_path"] = str(source)
                print(f"{ckpt} is {source}")


def lightning_main(args: Optional[Sequence[str]] = None, run: bool = True) -> ClassificationCLI:
    """``fit`` / ``validate`` / ``test`` (or, with ``run=False``, only parse and instantiate); ``args`` replaces
    sys.argv[1:] when given.

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
