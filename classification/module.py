"""The LightningModule of every classification run: network, training strategy, optimizer.

The typed ``__init__`` is the config schema (``model:`` section). A strategy is either the
paper's ``trainable_layers: N`` (+ ``patch_size: r``): the last N main-path convs and the
classifier train, gradient filters go on those convs, everything else is frozen; or explicit
``filter_install`` / ``freeze`` lists in gradfilt's dotted-path syntax. Set-up order: build,
load weights (``weights: imagenet`` or ``init_from`` an earlier stage's checkpoint), fold BN
(``fuse_bn``), install filters, freeze. Parameters are never re-created after that, so the
optimizer Lightning builds later sees exactly the trainable ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Optional, Union
from urllib.error import URLError

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision import models as tv

from gradfilt import FilterSpec, freeze as freeze_paths, install_filters
from gradfilt.cost import estimate_configured
from gradfilt.fuse import fuse_bn as fold_bn
from gradfilt.models import build_model
from gradfilt.paths import replace_module
from gradfilt.strategy import classifier_name, train_last_layers

__all__ = ["ClassificationModule", "strategy_tag", "imagenet_model"]


def strategy_tag(trainable_layers: Union[int, str], patch_size: Optional[int],
                 filter_install: Optional[list] = None, freeze: Optional[list] = None) -> str:
    """Short run name of a strategy: ``vanilla-all``, ``vanilla-2L``, ``R4-2L`` or ``custom``."""
    if filter_install or freeze:
        return "custom"
    depth = "all" if trainable_layers == "all" else f"{trainable_layers}L"
    return f"{'vanilla' if patch_size is None else f'R{patch_size}'}-{depth}"


def imagenet_model(arch: str, num_classes: int) -> nn.Module:
    """``arch`` with torchvision's ImageNet weights (IMAGENET1K_V1), classifier re-made if num_classes != 1000.

    Args:
        arch: mobilenet_v2, resnet18 or resnet34.
        num_classes: outputs of the classifier; a new, randomly initialized one unless 1000.
    """
    if arch not in ("mobilenet_v2", "resnet18", "resnet34"):
        raise ValueError(
            f"weights: imagenet is available for mobilenet_v2, resnet18 and resnet34, not {arch!r}. MCUNet's "
            "published weights use the authors' own module layout, which gradfilt.models.mcunet does not load; "
            "use weights: null (random init) or model.init_from with a checkpoint of your own pretraining"
        )
    weights = tv.get_model_weights(arch).IMAGENET1K_V1
    model = build_model(arch, 1000)
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (URLError, OSError) as err:
        raise RuntimeError(
            f"could not fetch ImageNet weights for {arch} from {weights.url} ({err}). Without network, put the "
            f"file in {Path(torch.hub.get_dir()) / 'checkpoints'} or set model.weights: null"
        ) from None
    model.load_state_dict(state)
    if num_classes != 1000:
        head = classifier_name(model, input_size=(1, 3, 64, 64))
        old = model.get_submodule(head)
        replace_module(model, head, nn.Linear(old.in_features, num_classes))
    return model


def _load_stage_checkpoint(model: nn.Module, path: str) -> None:
    """Load the network weights of an earlier stage's Lightning checkpoint (``model.`` prefix)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.init_from: no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("model."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
    if not state:
        raise ValueError(f"model.init_from: {path} holds no 'model.*' weights; is it a classification checkpoint?")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"model.init_from: {path} does not fit this network: {err}") from None


class _WarmupCosine:
    """lr factor: linear warm-up over ``warmup`` steps to 1, then cosine to 0 at ``total`` (or constant)."""

    def __init__(self, warmup: int, total: int, cosine: bool) -> None:
        self.warmup, self.total, self.cosine = warmup, total, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class ClassificationModule(pl.LightningModule):
    """A network trained with one strategy.

    Args:
        arch: a key of gradfilt.models.ARCHS (mobilenet_v2, resnet18, resnet34, mcunet).
        num_classes: classifier outputs (linked from the data module's dataset).
        image_size: input side (linked from the data module); used to trace the network.
        weights: null (random init) or imagenet (torchvision's weights, needs the network once).
        init_from: Lightning checkpoint of an earlier stage (e.g. pretraining) to start from.
        trainable_layers: the paper's "#Layers": the last N main-path convs + the classifier train; all: every layer.
        patch_size: gradient filter r on those N convs; null: vanilla BP.
        filter_install: explicit filter list (path / patch_size / type), instead of patch_size.
        freeze: explicit freeze list ("~path" un-freezes), instead of trainable_layers.
        fuse_bn: fold BatchNorm into the preceding convs before training.
        bn_eval: keep every BatchNorm in eval mode (running statistics do not move).
        optimizer: sgd or adam.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        scheduler: cosine (per step, to 0 at the end) or none (constant after warm-up).
        warmup_epochs: linear warm-up length in epochs (0: none).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        image_size: int = 224,
        weights: Optional[Literal["imagenet"]] = None,
        init_from: Optional[str] = None,
        trainable_layers: Union[int, Literal["all"]] = "all",
        patch_size: Optional[int] = None,
        filter_install: Optional[list[FilterSpec]] = None,
        freeze: Optional[list[str]] = None,
        fuse_bn: bool = False,
        bn_eval: bool = False,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        scheduler: Literal["cosine", "none"] = "cosine",
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        filter_install = [FilterSpec.parse(s if isinstance(s, FilterSpec) else dict(s)) for s in filter_install or []]
        self.save_hyperparameters(ignore=["filter_install"])
        self.hparams["filter_install"] = [asdict(s) for s in filter_install] or None
        if patch_size is not None and filter_install:
            raise ValueError("give either model.patch_size (with trainable_layers) or model.filter_install, not both")
        if freeze is not None and trainable_layers != "all":
            raise ValueError("give either model.trainable_layers or model.freeze, not both")
        if isinstance(trainable_layers, int) and trainable_layers < 0:
            raise ValueError(f"model.trainable_layers must be >= 0 or 'all', got {trainable_layers}")
        if warmup_epochs < 0:
            raise ValueError(f"model.warmup_epochs must be >= 0, got {warmup_epochs}")
        self.strategy = strategy_tag(trainable_layers, patch_size, filter_install, freeze)

        model = imagenet_model(arch, num_classes) if weights == "imagenet" else build_model(arch, num_classes)
        if init_from is not None:
            _load_stage_checkpoint(model, init_from)
        example = torch.zeros(1, 3, image_size, image_size)
        if fuse_bn:
            fold_bn(model, torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)))
        try:
            train_last_layers(model, trainable_layers, patch_size, example)
        except ValueError as err:
            raise ValueError(f"model.trainable_layers={trainable_layers} for {arch}: {err}") from None
        install_filters(model, filter_install)  # the explicit forms (exclusive with the two above)
        freeze_paths(model, freeze or [])
        self.model = model
        self.cost = estimate_configured(model, image_size)  # batch 1, the paper's columns
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> "ClassificationModule":
        super().train(mode)
        if mode and self.hparams.bn_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def on_fit_start(self) -> None:
        if self.logger is not None:
            metrics = {"Cost/BackwardFLOPs": float(self.cost.backward_flops),
                       "Cost/ActivationBytes": float(self.cost.activation_bytes)}
            self.logger.log_hyperparams({**self.hparams, "strategy": self.strategy}, metrics)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, acc: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc(logits, y)
        on_step = stage == "Train"
        self.log(f"{stage}/Loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/Acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.log("Train/LR", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return self._step(batch, "Train", self.train_acc)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "Val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "Test", self.test_acc)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the strategy leaves no parameter trainable")
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none" and hp.warmup_epochs == 0:
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError("a cosine / warm-up schedule needs trainer.max_epochs")
        factor = _WarmupCosine(round(hp.warmup_epochs * total / epochs), total, hp.scheduler == "cosine")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
