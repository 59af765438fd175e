"""The LightningModule of every classification run: network, training method, optimizer.

The typed ``__init__`` is the config schema (``model:`` section). The training method is a
:class:`gradfilt.methods.Method` given as ``model.method`` (``class_path`` / ``init_args``,
e.g. ``class_path: GradientFilter``, ``init_args: {layers: 2, patch_size: 4}``); any registered
or importable Method subclass works without a change here. Set-up order: build, load weights
(``weights: imagenet`` or ``init_from`` an earlier stage's checkpoint), fold BN (``fuse_bn``),
then ``method.apply``. Parameters are never re-created after that, so the optimizer Lightning
builds later sees exactly the trainable ones. Every training step calls the method's hooks:
``start_step`` first (with the optimizer), ``select_samples`` before the forward pass,
``after_forward`` with each kept sample's loss, ``before_backward`` and ``after_backward``; the
method's ``metrics`` are logged as ``Method/<key>``. A method that calibrates
(``calibration_batches`` > 0) is set up in ``setup()`` instead, after ``calibrate`` on that many
batches of the data module's training set.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Literal, Optional
from urllib.error import URLError

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy
from torchvision import models as tv

from gradfilt import classifier_name
from gradfilt.cost import measure, training_flops
from gradfilt.methods import estimate
from gradfilt.surgery.freeze import keep_bn_eval
from gradfilt import surgery
from gradfilt.methods import Method, Vanilla, build_method
from gradfilt.models import TIMM_PREFIX, build_model, timm_pretrained
from gradfilt.surgery.paths import replace_module

__all__ = ["ClassificationModule", "network", "imagenet_model", "method_of", "calibration_batches"]


def method_of(config: Optional[dict]) -> Method:
    """The Method of a ``model.method`` config value (None: vanilla BP on every layer).

    Args:
        config: ``{class_path, init_args}`` as LightningCLI writes it to config.yaml, a Method, or None.
    """
    return Vanilla() if config is None else build_method(config)


def imagenet_model(arch: str, num_classes: int) -> nn.Module:
    """``arch`` with ImageNet weights, classifier re-made if num_classes != 1000: torchvision's IMAGENET1K_V1
    for mobilenet_v2, resnet18 and resnet34, timm's default weights for ``timm/<name>``.

    Args:
        arch: mobilenet_v2, resnet18, resnet34 or timm/<name>.
        num_classes: outputs of the classifier; a new, randomly initialized one unless 1000.
    """
    if arch.startswith(TIMM_PREFIX):
        return timm_pretrained(arch, num_classes)
    if arch not in ("mobilenet_v2", "resnet18", "resnet34"):
        raise ValueError(
            f"weights: imagenet is available for mobilenet_v2, resnet18, resnet34 and timm/<name>, not {arch!r}. "
            "MCUNet's "
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


def network(arch: str, num_classes: int, image_size: int, weights: Optional[str] = None,
            init_from: Optional[str] = None, fuse_bn: bool = False) -> nn.Module:
    """The network as a run builds it before its method: ``weights`` or ``init_from`` loaded, BatchNorm
    folded when ``fuse_bn`` (arguments as :class:`ClassificationModule`'s)."""
    model = imagenet_model(arch, num_classes) if weights == "imagenet" else build_model(arch, num_classes)
    if init_from is not None:
        _load_stage_checkpoint(model, init_from)
    if fuse_bn:
        batch = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        surgery.fuse_bn(model, batch)
    return model


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


def calibration_batches(loader: DataLoader, count: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``count`` batches of the loader's dataset, drawn in a seeded random order (no worker processes,
    the run's random stream untouched), for a method's :meth:`~gradfilt.methods.Method.calibrate`.

    Args:
        loader: the training DataLoader (its dataset and batch size are used).
        count: how many batches (fewer if the dataset is smaller).
        seed: the draw's seed.
    """
    draw = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))
    batches = []
    for inputs, targets in draw:
        batches.append((inputs, targets))
        if len(batches) == count:
            break
    return batches


class ClassificationModule(pl.LightningModule):
    """A network trained with one method.

    Args:
        arch: a key of gradfilt.models.ARCHS (mobilenet_v2, resnet18, resnet34, mcunet) or timm/<name>.
        num_classes: classifier outputs (linked from the data module's dataset).
        image_size: input side (linked from the data module); used to trace the network.
        weights: null (random init) or imagenet (torchvision's weights, needs the network once).
        init_from: Lightning checkpoint of an earlier stage (e.g. pretraining) to start from.
        method: the training method (a gradfilt Method: Vanilla, GradientFilter, ...); default:
            vanilla BP on every layer.
        fuse_bn: fold BatchNorm into the preceding convs before the method is applied.
        bn_eval: keep every BatchNorm in eval mode (running statistics do not move), trainable or not.
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
        method: Optional[Method] = None,
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
        self.save_hyperparameters(ignore=["method"])
        self.method = method_of(method)
        self.hparams["method"] = self.method.config()
        if warmup_epochs < 0:
            raise ValueError(f"model.warmup_epochs must be >= 0, got {warmup_epochs}")

        self.model = network(arch, num_classes, image_size, weights, init_from, fuse_bn)
        self.cost = None
        if not self.needs_calibration:
            self.set_up_method()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    @property
    def needs_calibration(self) -> bool:
        """The method wants training batches before it is set up (and has not been set up yet)."""
        return self.cost is None and self.method.calibration_batches > 0

    def set_up_method(self, batches: Optional[list[tuple[Tensor, Tensor]]] = None) -> None:
        """Set the method up on the network (after :meth:`Method.calibrate` on ``batches`` if it wants them).

        Args:
            batches: ``method.calibration_batches`` (inputs, targets) training batches, for a method that
                calibrates; None otherwise.
        """
        hp = self.hparams
        # forward + backward of full BP on every layer: what a method's saved computation is measured against
        self.reference_flops = training_flops(estimate(self.model, hp.image_size, "all"))
        try:
            if batches is not None:
                self.method.calibrate(self.model, batches)
            self.method.apply(self.model, torch.zeros(1, 3, hp.image_size, hp.image_size))
        except ValueError as err:
            raise ValueError(f"model.method ({self.method.tag}) on {hp.arch}: {err}") from None
        if hp.bn_eval:
            keep_bn_eval(self.model)
        self.cost = self.method.cost(self.model, hp.image_size)  # batch 1, the paper's columns
        summary = self.method.summary()
        if summary:
            rank_zero_info(f"{self.method.tag}:\n{summary}")

    def setup(self, stage: str) -> None:
        if self.needs_calibration:
            data = getattr(self.trainer, "datamodule", None)
            if data is None:
                raise ValueError(f"model.method ({self.method.tag}) calibrates on training batches: run it with a "
                                 f"data module (the data: section), not bare dataloaders")
            self.set_up_method(calibration_batches(data.train_dataloader(), self.method.calibration_batches))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        if self.logger is not None:
            metrics = {"Cost/BackwardFLOPs": float(self.cost.backward_flops),
                       "Cost/ForwardFLOPs": float(self.cost.forward_flops),
                       "Cost/OverheadFLOPs": float(self.cost.overhead_flops),
                       "Cost/ReferenceFLOPs": float(self.reference_flops),
                       "Cost/ActivationBytes": float(self.cost.activation_bytes),
                       "Cost/TrainableParams": float(self.cost.trainable_params),
                       "Cost/MeasuredBytes": float(self.measured_bytes())}
            self.logger.log_hyperparams({**self.hparams, **self.method.fields()}, metrics)

    def measured_bytes(self) -> int:
        """Bytes autograd keeps for backward per image, in one training step of 2 images (training-mode
        BatchNorm needs more than one value per channel), as set up (every saved tensor counted once,
        parameters not: :func:`gradfilt.cost.measure`), on a copy of the network."""
        net = copy.deepcopy(self.model).train()  # frozen BatchNorm layers stay in eval mode (their hooks)
        size = self.hparams.image_size
        param = next(net.parameters())
        devices = [param.device.index or 0] if param.is_cuda else []
        with torch.random.fork_rng(devices=devices):  # dropout here must not shift the run's random stream
            images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
            return measure(net, images.to(device=param.device, dtype=param.dtype))["total"] // 2

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, acc: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        loss = losses.mean()
        if stage == "Train":
            self.method.after_forward(self.model, losses.detach(), self.global_step)
        acc(logits, y)
        on_step = stage == "Train"
        self.log(f"{stage}/Loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{stage}/Acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Optional[Tensor]:
        self.log("Train/LR", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        self.method.start_step(self.model, self.optimizers(use_pl_optimizer=False), self.global_step)
        x, y = batch
        keep = self.method.select_samples(self.model, x, y, self.global_step)
        if keep is not None:
            x, y = x[keep], y[keep]
            self.log("Method/KeptFraction", len(y) / len(batch[1]), on_step=True, on_epoch=True,
                     batch_size=len(batch[1]))
            if len(y) == 0:
                return None  # Lightning skips the backward and the optimizer step
        loss = self._step((x, y), "Train", self.train_acc)
        for key, value in self.method.metrics().items():  # after the forward hooks: this step's values
            self.log(f"Method/{key}", value, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self) -> None:
        self._step_seconds = 0.0

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # the device is idle here: the previous step ended synchronized (validation, with its metrics)
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._step_seconds += time.perf_counter() - self._step_started

    def on_train_epoch_end(self) -> None:
        # wall-clock of the epoch's training steps (method hooks, forward, backward, optimizer; no data
        # loading, no validation)
        self.log("Time/TrainStepSeconds", self._step_seconds, on_step=False, on_epoch=True)

    def on_before_backward(self, loss: Tensor) -> None:
        self.method.before_backward(self.model, loss, self.global_step)

    def on_after_backward(self) -> None:
        self.method.after_backward(self.model, self.global_step)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "Val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "Test", self.test_acc)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"the method {self.method.tag} leaves no parameter trainable")
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
