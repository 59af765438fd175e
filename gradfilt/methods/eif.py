"""Early instance filtering (Wu, Wang, Shi, Hu, IEEE TCAD 2020) as a training method wrapped around another.

A small *filter network* sees every incoming instance before the main network and predicts
whether the main network's loss on it is High or Low; Low instances skip the main network's
forward and backward. The filter trains online, every step, on the instances the main network
did see (:meth:`EarlyInstanceFilter.after_forward` gets their losses):

* self-supervised label: High when the main network's loss on the instance is >= T_l;
* adaptive threshold: R_TH, the share of the last ``window`` mini-batches' instances that were
  predicted High and labelled High; after every step T_l <- a1 * T_l if R_TH >= R_set (too many
  High: raise the bar), else a2 * T_l (a1 > 1 > a2);
* uncertainty sampling: a predicted-Low instance whose prediction entropy (nats) exceeds
  ``entropy_threshold`` is trained on anyway, so that false Lows get labels;
* group-weighted cross-entropy: true-High and false-Low instances weigh 1 / R_set, false-High and
  true-Low 1 / (1 - R_set), normalized to sum 1 over the step's labelled instances;
* filter networks, sized to the input: a slim LeNet (3x3 convs with 6 and 16 filters) below
  32x32, ResNet-8 (3x3 stem with 16 filters, three basic blocks of 16 / 32 / 64 filters) from
  32x32 on; two outputs (Low, High). Its own Adam optimizer; it is not part of the main network or
  its checkpoints.

What the main network trains with is the wrapped method (``method``: vanilla BP on every layer by
default, or e.g. error-map pruning, with gradient filters or not): early instance filtering
composes with any method by configuration. At least one instance of every batch is kept (the most
likely High), so a step never empties and data-parallel ranks stay in step.

The paper gives no values for R_set's companions a1, a2, the window n, the entropy threshold or the
initial T_l; the defaults here come from a sweep on Fashion-MNIST (``docs/methods.md``).
"""

from __future__ import annotations

import collections
import math
from dataclasses import replace
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cost import estimate_configured
from ..models import cifar_resnet
from .base import Method, build_method, register_method
from .vanilla import Vanilla

__all__ = ["EarlyInstanceFilter", "filter_network", "FILTER_NETWORKS"]


FILTER_NETWORKS = ("auto", "slim_lenet", "resnet8")


def filter_network(in_channels: int, image_size: int, kind: str = "auto",
                   input_size: Optional[int] = None) -> nn.Module:
    """The paper's filter networks, 2 outputs (Low, High).

    Args:
        in_channels: channels of the input images.
        image_size: the input's smaller side.
        kind: ``slim_lenet``, ``resnet8``, or ``auto``: slim LeNet below 32x32, ResNet-8 from 32x32 (of
            what the filter sees).
        input_size: the filter sees the images average-pooled to input_size x input_size (cheaper);
            None: at their own size.
    """
    if kind not in FILTER_NETWORKS:
        raise ValueError(f"unknown filter network {kind!r}; valid: {list(FILTER_NETWORKS)}")
    if input_size is not None:
        return nn.Sequential(nn.AdaptiveAvgPool2d(input_size), filter_network(in_channels, input_size, kind))
    if kind == "resnet8" or kind == "auto" and image_size >= 32:
        net = cifar_resnet(8, 2)
        if in_channels != 3:
            net[0] = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        return net
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveMaxPool2d(4),  # (N, 16, 4, 4)
        nn.Flatten(), nn.Linear(16 * 4 * 4, 2),
    )


@register_method("eif")
class EarlyInstanceFilter(Method):
    """A filter network drops predicted low-loss instances before the main network (module docstring).

    Args:
        method: what the main network trains with (a method config or instance); default vanilla BP
            on every layer.
        target_ratio: R_set, the share of instances meant to be High, in (0, 1).
        initial_threshold: T_l at the start (a loss value).
        a1: T_l's factor when R_TH >= R_set (> 1).
        a2: T_l's factor otherwise (in (0, 1)).
        window: n, the mini-batches R_TH is measured over.
        entropy_threshold: predicted-Low instances above this prediction entropy (nats, at most
            ln 2) are trained on.
        filter_lr: the filter network's Adam learning rate.
        filter_net: ``auto`` (the paper's choice by input size: slim LeNet below 32x32, ResNet-8 from
            32x32), ``slim_lenet`` or ``resnet8``.
        filter_input_size: the filter sees the images average-pooled to this size (e.g. 14 halves a
            28x28 input, a quarter of the filter's FLOPs); None: at their own size.
        seed: seeds the filter network's initial weights.
    """

    def __init__(self, method: Union[None, Method, Mapping[str, Any], str] = None, target_ratio: float = 0.3,
                 initial_threshold: float = 1.0, a1: float = 1.05, a2: float = 0.95, window: int = 10,
                 entropy_threshold: float = 0.6, filter_lr: float = 1e-3, filter_net: str = "auto",
                 filter_input_size: Optional[int] = None, seed: int = 0) -> None:
        if not 0 < target_ratio < 1:
            raise ValueError(f"target_ratio (R_set, the share of High instances) must be in (0, 1), "
                             f"got {target_ratio!r}")
        if not initial_threshold > 0:
            raise ValueError(f"initial_threshold (T_l) must be a loss value > 0, got {initial_threshold!r}")
        if not a1 > 1 or not 0 < a2 < 1:
            raise ValueError(f"the threshold factors need a1 > 1 and 0 < a2 < 1, got a1={a1!r}, a2={a2!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1 (mini-batches), got {window!r}")
        if not 0 <= entropy_threshold <= math.log(2):
            raise ValueError(f"entropy_threshold must be in [0, ln 2 = {math.log(2):.4f}] nats, "
                             f"got {entropy_threshold!r}")
        if not filter_lr > 0:
            raise ValueError(f"filter_lr must be > 0, got {filter_lr!r}")
        if filter_net not in FILTER_NETWORKS:
            raise ValueError(f"unknown filter_net {filter_net!r}; valid: {list(FILTER_NETWORKS)}")
        size = filter_input_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
            raise ValueError(f"filter_input_size must be None or an int >= 8 (pixels), got {filter_input_size!r}")
        self.filter_net, self.filter_input_size = filter_net, filter_input_size
        self.inner = Vanilla(layers="all") if method is None else build_method(method)
        if isinstance(self.inner, EarlyInstanceFilter):
            raise ValueError("early instance filtering cannot wrap itself")
        self.target_ratio, self.a1, self.a2, self.window = target_ratio, a1, a2, window
        self.initial_threshold, self.entropy_threshold, self.filter_lr, self.seed = (
            initial_threshold, entropy_threshold, filter_lr, seed)
        self.calibration_batches = self.inner.calibration_batches
        self.threshold = initial_threshold
        self.filter: Optional[nn.Module] = None  # apply()
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._pending: Optional[dict[str, Tensor]] = None  # this step's filter outputs, until the losses come
        self._history: collections.deque = collections.deque(maxlen=window)  # (true High count, batch size)
        self._last: dict[str, float] = {}

    # --- set-up -------------------------------------------------------------------------------
    def calibrate(self, model: nn.Module, batches) -> None:
        self.inner.calibrate(model, batches)

    def apply(self, model: nn.Module, example_input: Tensor) -> None:
        self.inner.apply(model, example_input)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.filter = filter_network(example_input.shape[1], min(example_input.shape[2:]), self.filter_net,
                                         self.filter_input_size)
        self._optimizer = torch.optim.Adam(self.filter.parameters(), lr=self.filter_lr)
        self.threshold = self.initial_threshold
        self._history.clear()

    # --- per-step hooks -----------------------------------------------------------------------
    def start_step(self, model: nn.Module, optimizer, step: int) -> None:
        self.inner.start_step(model, optimizer, step)

    def select_samples(self, model: nn.Module, inputs: Tensor, targets: Tensor, step: int) -> Optional[Tensor]:
        if self.filter is None:
            raise RuntimeError("EarlyInstanceFilter.select_samples before apply()")
        self.filter.to(inputs.device).train()
        with torch.enable_grad():
            logits = self.filter(inputs)  # (N, 2): Low, High
        probs = logits.detach().float().softmax(1)
        predicted_high = probs[:, 1] > 0.5
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)  # nats
        keep = predicted_high | (entropy > self.entropy_threshold)
        if not keep.any():  # never an empty step: the most likely High instance is trained on
            keep[probs[:, 1].argmax()] = True
        self._pending = {"logits": logits[keep], "predicted_high": predicted_high[keep], "batch": len(inputs)}
        return keep

    def after_forward(self, model: nn.Module, sample_losses: Tensor, step: int) -> None:
        self.inner.after_forward(model, sample_losses, step)
        pending, self._pending = self._pending, None
        if pending is None:
            return
        labels_high = sample_losses.detach().to(pending["logits"].device) >= self.threshold  # self-supervised label
        predicted_high = pending["predicted_high"]
        # group weights: true-High and false-Low 1 / R_set, false-High and true-Low 1 / (1 - R_set), sum 1
        weights = torch.where(labels_high, 1.0 / self.target_ratio, 1.0 / (1.0 - self.target_ratio))
        weights = weights / weights.sum()
        with torch.enable_grad():
            filter_loss = (weights * F.cross_entropy(pending["logits"].float(), labels_high.long(),
                                                     reduction="none")).sum()
            self._optimizer.zero_grad(set_to_none=True)
            filter_loss.backward()
        self._optimizer.step()
        true_high = int((predicted_high & labels_high).sum())
        self._history.append((true_high, pending["batch"]))
        ratio = sum(t for t, _ in self._history) / sum(n for _, n in self._history)  # R_TH over the window
        self.threshold *= self.a1 if ratio >= self.target_ratio else self.a2
        labelled_high = int(labels_high.sum())
        predicted = int(predicted_high.sum())
        self._last.update({"Threshold": self.threshold, "HighRatio": ratio, "FilterLoss": float(filter_loss.detach()),
                           "FilterPrecision": true_high / predicted if predicted else float("nan"),
                           "FilterRecall": true_high / labelled_high if labelled_high else float("nan")})

    def before_backward(self, model: nn.Module, loss: Tensor, step: int) -> None:
        self.inner.before_backward(model, loss, step)

    def after_backward(self, model: nn.Module, step: int) -> None:
        self.inner.after_backward(model, step)

    # --- description --------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """The inner method's metrics, plus ``Threshold`` (T_l), ``HighRatio`` (R_TH), the filter's loss and its
        precision / recall for High against the labels of the instances the main network saw."""
        return {**self.inner.metrics(), **self._last}

    def summary(self) -> str:
        return self.inner.summary()

    def cost(self, model: nn.Module, image_size, batch_size: int = 1, in_channels: int = 3):
        """The wrapped method's cost for the main network, per instance it trains on, with the filter
        network's forward and backward on every instance as ``overhead_flops`` (its backward runs on the
        whole batch: the dropped instances' rows are zeros, but they are computed). How many instances
        the main network sees is known only while training: :func:`gradfilt.cost.training_flops`
        combines the two with the kept share."""
        if self.filter is None:
            raise RuntimeError("EarlyInstanceFilter.cost before apply()")
        report = self.inner.cost(model, image_size, batch_size, in_channels)
        own = estimate_configured(self.filter, image_size, batch_size, in_channels)
        return replace(report, overhead_flops=report.overhead_flops + own.forward_flops + own.backward_flops)

    @property
    def tag(self) -> str:
        """``eif<R_set>[-<filter network>][-f<its input size>]-<the wrapped method's tag>``, e.g.
        ``eif0.3-vanilla-all``, ``eif0.3-slim_lenet-f32-vanilla-4L``."""
        net = "" if self.filter_net == "auto" else f"-{self.filter_net}"
        size = "" if self.filter_input_size is None else f"-f{self.filter_input_size}"
        return f"eif{self.target_ratio:g}{net}{size}-{self.inner.tag}"

    def fields(self) -> dict[str, Any]:
        return {**self.inner.fields(), "method": self.tag}
