"""Dynamic gradient sparse update, our reading of Li & Chang (ISCAS 2024), as a training method.

Only the paper's abstract is public: it updates only important channels and layers, skips the
gradient computation of the others, and changes the channel selection between iterations so that
over time most parameters of the update layers are trained. What follows is gradfilt's documented
reading of that, not the authors' code.

**Layers** (once, before training). The candidates are the last ``candidates`` convs (forward
execution order, every conv counted as in :class:`~gradfilt.methods.SparseUpdate`; default the
second half of the network: the front layers stay frozen). A candidate's importance is its mean
squared weight gradient per weight on ``calibration_batches`` labelled training batches
(:meth:`DynamicSparseUpdate.calibrate`: dense gradients, on a copy of the network). Why: to first
order an SGD step of size lr on a weight w lowers the loss by lr * (dL/dw)^2, so when a fixed number
of weights is updated per step, the layers where one updated weight buys the largest loss decrease
come first. Layers are taken in that order, each kept if the step memory of the chosen set still
fits ``memory_budget`` and skipped otherwise; or they are listed with ``manual_weight_idx``.

**Channels** (every step). ``update_ratio`` is the fraction of all the network's conv weights that
train per step: every chosen layer trains the same fraction f = min(1, update_ratio * W_all /
W_chosen) of its channels (input channels of a dense conv, output channels of a depthwise one; at
least one), n per layer, the same n every step. Which n changes every step:

* ``rotation``: a fixed, seeded permutation of the layer's channels read in consecutive windows of
  n, so every channel trains once every ceil(C / n) steps (the rotation period);
* ``importance``: a ``floor`` share of the n slots, ceil(floor * n), goes to the channels that
  trained least recently (so every channel trains at least once every ceil(C / ceil(floor * n))
  steps); the other slots are sampled without replacement in proportion to a channel's score, the
  running mean (decay ``score_decay``) of its mean squared weight gradient, updated whenever it
  trains and starting from the calibration gradients.

**Real savings.** A chosen layer becomes a :class:`gradfilt.ops.SparseConv2d` that moves with
:meth:`~gradfilt.ops.SparseConv2d.select`: it keeps only the n trained input channels for
backward and computes only their weight-gradient columns; the others are never computed. The
frozen convs between chosen layers keep nothing (:func:`gradfilt.surgery.lean_frozen_convs`: their
grad_x needs only the weight). The chosen layers' biases (fold BatchNorm first to have them) and
the classifier train too; everything else is frozen.

**Optimizer state.** The optimizer sees one fixed-size Parameter per chosen layer. When its
channels move, the per-element state of the channels that leave (SGD's momentum buffer, Adam's
moments) is parked and the channels that arrive get theirs back: a channel's momentum stays frozen
while it does not train and resumes when it trains again (zero at its first selection), and weight
decay only touches the trained channels. Parked state is not written to checkpoints: a resumed run
restarts the chosen layers' optimizer state at zero. Adam keeps one step count per Parameter, so a
channel's first update after step 0 gets the bias correction of old moments; SGD has no such effect.

**Memory model** (the budget; batch 1, float32, KB = 1024 B): per chosen layer its kept input
channels, n * H_in * W_in values (the paper's convention: conv inputs only; what autograd keeps for
the convs, ``gradfilt.cost.measure``'s ``conv`` bytes), plus the gradient buffers of every trained
parameter (the n channels' weights, the biases, the classifier). The counts are fixed, so every
step needs the same; :meth:`DynamicSparseUpdate.memory` reports it next to dense training of the
same layers. Not in the model (nor in the paper's): what the activation functions between the
chosen layers keep for their own backward, which ``measure`` reports as ``activation``.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from typing import Any, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cost import FLOAT_BYTES
from ..surgery.freeze import classifier_of, freeze
from ..surgery.paths import replace_module, resolve
from ..ops.sparse import SparseConv2d, channel_dim, is_depthwise
from ..surgery.lean import lean_frozen_convs
from ..surgery.trace import LayerCall, trace_layers
from .base import Method, register_method
from .vanilla import config_digest

__all__ = ["DynamicSparseUpdate", "parse_bytes", "POLICIES"]

POLICIES = ("rotation", "importance")
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "mib": 1024 ** 2}


def parse_bytes(value: Union[int, str]) -> int:
    """Bytes from an int or a string such as ``256KB``, ``1.5MB`` (KB = 1024 B).

    Args:
        value: an int >= 1, or a number followed by B, KB or MB (case-insensitive).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"memory size {value!r} is not a byte count: give an int or e.g. '256KB', '1.5MB'")
        number, unit = float(match.group(1)), match.group(2).lower()
    nbytes = int(number * _UNITS[unit])
    if nbytes < 1:
        raise ValueError(f"memory size {value!r} must be at least 1 byte")
    return nbytes


def _channels(conv: nn.Conv2d) -> int:
    """Channels selection runs over: input channels, output channels of a depthwise conv."""
    return conv.weight.shape[channel_dim(conv.groups)]


def _per_channel(conv: nn.Conv2d) -> int:
    """Weights of one selectable channel."""
    return conv.weight.numel() // _channels(conv)


def _channel_sums(values: Tensor, groups: int) -> Tensor:
    """Per-channel sums of a weight-shaped tensor, along the selection dimension."""
    dim = channel_dim(groups)
    return values.transpose(0, dim).reshape(values.shape[dim], -1).sum(1)


@register_method("dynamic_sparse")
class DynamicSparseUpdate(Method):
    """Rotating or importance-sampled channels of budget-chosen layers train each step (module docstring).

    Args:
        memory_budget: bytes a step may hold for the chosen layers' kept activations and every
            gradient buffer, batch 1 (int, or e.g. ``256KB``); None: no limit.
        update_ratio: fraction of all conv weights of the network trained per step, in (0, 1].
        policy: ``rotation`` or ``importance`` (how the channels move every step).
        manual_weight_idx: the convs to update (0-based, forward execution order); None: chosen by importance
            within the budget.
        candidates: layers are chosen among the last N convs; None: the second half of the network.
        calibration_batches: labelled training batches the importance is measured on.
        floor: ``importance``: share of each step's channels given to the least recently trained.
        score_decay: ``importance``: decay of the running channel scores.
        train_classifier: the classifier (last ``nn.Linear`` of the forward pass) trains.
        seed: seeds the rotation orders and the importance sampling.
    """

    def __init__(self, memory_budget: Optional[Union[int, str]] = "256KB", update_ratio: float = 0.02,
                 policy: Literal["rotation", "importance"] = "rotation",
                 manual_weight_idx: Optional[list[int]] = None,
                 candidates: Optional[int] = None, calibration_batches: int = 4, floor: float = 0.25,
                 score_decay: float = 0.9, train_classifier: bool = True, seed: int = 0) -> None:
        self.budget = None if memory_budget is None else parse_bytes(memory_budget)
        if isinstance(update_ratio, bool) or not isinstance(update_ratio, (int, float)) or not 0 < update_ratio <= 1:
            raise ValueError(f"update_ratio must be a fraction of the conv weights in (0, 1], got {update_ratio!r}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; valid: {list(POLICIES)}")
        layers = manual_weight_idx
        if layers is not None:
            if isinstance(layers, (str, int)) or not layers or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ValueError(f"manual_weight_idx must be a non-empty list of conv indices, got {layers!r}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"manual_weight_idx lists a conv twice: {layers}")
        if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int)
                                       or candidates < 1):
            raise ValueError(f"candidates must be an int >= 1 or null, got {candidates!r}")
        if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) or calibration_batches < 0:
            raise ValueError(f"calibration_batches must be an int >= 0, got {calibration_batches!r}")
        if layers is None and calibration_batches == 0:
            raise ValueError("with calibration_batches 0 the layers cannot be chosen by importance: list them "
                             "with manual_weight_idx, or calibrate on at least one batch")
        if not 0 < floor <= 1:
            raise ValueError(f"floor must be in (0, 1] (the share of channels kept for the least recently "
                             f"trained, so every channel trains), got {floor!r}")
        if not 0 <= score_decay < 1:
            raise ValueError(f"score_decay must be in [0, 1), got {score_decay!r}")
        self.memory_budget, self.update_ratio, self.policy = memory_budget, float(update_ratio), policy
        self.manual_weight_idx = None if layers is None else list(layers)
        self.candidates, self.floor, self.score_decay = candidates, floor, score_decay
        self.train_classifier, self.seed = train_classifier, seed
        # importance needs the calibration scores even for listed layers
        self.calibration_batches = calibration_batches if layers is None or policy == "importance" else 0
        self.importance_: dict[str, float] = {}  # calibrate(): mean squared weight gradient per weight
        self._scores: dict[str, Tensor] = {}  # per channel, mean squared weight gradient per weight
        self.plan_: list[dict[str, Any]] = []  # apply(): per chosen layer, in execution order
        self._state: dict[str, dict[str, Any]] = {}  # per chosen layer: order, last, parked optimizer state
        self.lean_: list[str] = []  # apply(): frozen convs on the gradient path that keep nothing
        self._step: Optional[int] = None
        self._started = False

    # --- planning -----------------------------------------------------------------------------
    @staticmethod
    def _convs(calls: Sequence[LayerCall]) -> list[LayerCall]:
        return [call for call in calls if isinstance(call.module, nn.Conv2d)]  # one call per conv, in order

    def _pool(self, convs: Sequence[LayerCall]) -> list[LayerCall]:
        """The convs importance is measured on: the listed ones, or the selectable ones among the candidates."""
        if self.manual_weight_idx is not None:
            return [convs[i] for i in self.manual_weight_idx if 0 <= i < len(convs) and self._selectable(convs[i])]
        k = self.candidates if self.candidates is not None else max(1, len(convs) // 2)
        if k > len(convs):
            raise ValueError(f"candidates={k} but the forward pass runs only {len(convs)} convs")
        return [c for c in convs[len(convs) - k:] if self._selectable(c)]

    @staticmethod
    def _selectable(call: LayerCall) -> bool:
        conv = call.module
        return type(conv) is nn.Conv2d and (conv.groups == 1 or is_depthwise(conv))

    def calibrate(self, model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> None:
        """Measure each candidate conv's importance (and each channel's score) on labelled batches.

        Dense weight gradients of the candidates under the cross-entropy loss, on a copy of
        ``model`` in eval mode; ``model`` is not changed.

        Args:
            model: the network as :meth:`apply` will get it.
            batches: (inputs, class targets) pairs.
        """
        batches = list(batches)
        if not batches:
            raise ValueError("calibrate() needs at least one (inputs, targets) batch")
        net = copy.deepcopy(model).eval()
        param = next(net.parameters())
        names = [c.name for c in self._pool(self._convs(trace_layers(net, batches[0][0][:1].to(param.device))))]
        freeze(net, [""])
        weights = {name: resolve(net, name).weight.requires_grad_(True) for name in names}
        sums = {name: torch.zeros(_channels(resolve(net, name)), dtype=torch.float64) for name in names}
        for inputs, targets in batches:
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(inputs.to(param.device)), targets.to(param.device)).backward()
            for name, weight in weights.items():
                sums[name] += _channel_sums(weight.grad.detach().double().pow(2), resolve(net, name).groups).cpu()
        for name in names:
            conv = resolve(net, name)
            per_weight = sums[name] / len(batches) / _per_channel(conv)  # (C,) mean squared gradient per weight
            self._scores[name] = per_weight.float()
            self.importance_[name] = float(per_weight.mean())

    def _counts(self, chosen: Sequence[LayerCall], all_weights: int) -> list[int]:
        """Channels per step of each chosen layer: the same fraction f of every layer (at least one)."""
        chosen_weights = sum(c.module.weight.numel() for c in chosen)
        f = min(1.0, self.update_ratio * all_weights / chosen_weights)
        return [min(_channels(c.module), max(1, round(f * _channels(c.module)))) for c in chosen]

    def _layer_bytes(self, call: LayerCall, n: int) -> tuple[int, int]:
        """(kept activation bytes, gradient-buffer bytes) of a chosen conv training n channels, batch 1."""
        conv = call.module
        c_in, h, w = call.in_shape
        bias = conv.out_channels if conv.bias is not None else 0
        return n * h * w * FLOAT_BYTES, (n * _per_channel(conv) + bias) * FLOAT_BYTES

    def _step_bytes(self, chosen: Sequence[LayerCall], counts: Sequence[int], fixed: int) -> int:
        return fixed + sum(sum(self._layer_bytes(c, n)) for c, n in zip(chosen, counts))

    def _plan(self, model: nn.Module, example_input: Tensor):
        """(chosen layer calls in execution order, their channel counts, the classifier's name or None, the
        weights of all convs, every conv call, the classifier's gradient bytes), from one traced forward pass."""
        calls = trace_layers(model, example_input)
        convs = self._convs(calls)
        classifier = classifier_of(calls, model_name=type(model).__name__) if self.train_classifier else None
        fixed = 0 if classifier is None else sum(p.numel() for p in resolve(model, classifier).parameters()) * \
            FLOAT_BYTES
        all_weights = sum(c.module.weight.numel() for c in convs)
        budget = self.budget if self.budget is not None else math.inf
        if self.manual_weight_idx is not None:
            bad = [i for i in self.manual_weight_idx if not 0 <= i < len(convs)]
            if bad:
                raise ValueError(f"manual_weight_idx {bad} out of range: the forward pass runs {len(convs)} convs, "
                                 f"indices 0..{len(convs) - 1}")
            chosen = [convs[i] for i in sorted(self.manual_weight_idx)]
            wrong = [f"{convs.index(c)} ({c.name}, groups={c.module.groups})"
                     for c in chosen if not self._selectable(c)]
            if wrong:
                raise ValueError(f"conv {', '.join(wrong)}: dynamic sparse update selects channels of plain dense "
                                 f"and depthwise nn.Conv2d layers only")
            counts = self._counts(chosen, all_weights)
            need = self._step_bytes(chosen, counts, fixed)
            if need > budget:
                raise ValueError(f"manual_weight_idx {sorted(self.manual_weight_idx)} need {need / 1024:.1f} KB per "
                                 f"step at update_ratio {self.update_ratio:g}, over memory_budget "
                                 f"{self.budget / 1024:.1f} KB")
        else:
            pool = self._pool(convs)
            missing = [c.name for c in pool if c.name not in self.importance_]
            if missing:
                raise ValueError(f"{type(self).__name__} chooses its layers by importance: call calibrate(model, "
                                 f"batches) before apply() (the classification CLI does, on "
                                 f"calibration_batches training batches), or list them with manual_weight_idx; not "
                                 f"calibrated: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
            floor_bytes = self.update_ratio * all_weights * FLOAT_BYTES + fixed
            if floor_bytes > budget:
                raise ValueError(f"update_ratio {self.update_ratio:g} trains {self.update_ratio * all_weights:,.0f} "
                                 f"conv weights per step, whose gradients (with the classifier's) alone need "
                                 f"{floor_bytes / 1024:.1f} KB, over memory_budget {self.budget / 1024:.1f} KB: raise "
                                 f"the budget or lower the ratio")
            chosen = []
            for call in sorted(pool, key=lambda c: -self.importance_[c.name]):  # stable: ties in execution order
                trial = sorted(chosen + [call], key=convs.index)
                if self._step_bytes(trial, self._counts(trial, all_weights), fixed) <= budget:
                    chosen = trial
            if not chosen:
                cheapest = min(self._step_bytes([c], [1], fixed) for c in pool)
                raise ValueError(f"memory_budget {self.budget / 1024:.1f} KB fits none of the {len(pool)} candidate "
                                 f"convs: the cheapest needs {cheapest / 1024:.1f} KB per step at one channel "
                                 f"(with the classifier's gradients)")
            counts = self._counts(chosen, all_weights)
        return chosen, counts, classifier, all_weights, convs, fixed

    def apply(self, model: nn.Module, example_input: Tensor) -> None:
        chosen, counts, classifier, all_weights, convs, fixed = self._plan(model, example_input)
        freeze(model, [""])
        self.plan_, self._state = [], {}
        self._step, self._started = 0, False
        for index, (call, n) in enumerate(zip(chosen, counts)):
            conv = call.module
            total = _channels(conv)
            generator = torch.Generator().manual_seed(self.seed * 1000 + index)
            state = {"n": n, "order": torch.randperm(total, generator=generator), "generator": generator,
                     "last": torch.full((total,), -1, dtype=torch.long), "parked": {},
                     "scores": self._scores.get(call.name, torch.ones(total)).clone()}
            self._state[call.name] = state
            first = self._choose(call.name, 0)
            state["last"][first] = 0
            sparse = SparseConv2d.from_conv(conv, first.tolist())
            if conv.bias is not None:
                conv.bias.requires_grad_(True)
            replace_module(model, call.name, sparse)
            act, grad = self._layer_bytes(call, n)
            self.plan_.append({"index": convs.index(call), "name": call.name, "channels": n, "of": total,
                               "importance": self.importance_.get(call.name), "activation_bytes": act,
                               "gradient_bytes": grad, "dense_activation_bytes": act // n * total,
                               "dense_gradient_bytes": grad + (total - n) * _per_channel(conv) * FLOAT_BYTES,
                               "weights": n * _per_channel(conv)})
        if classifier is not None:
            resolve(model, classifier).requires_grad_(True)
        self.lean_ = lean_frozen_convs(model, example_input)
        self._all_weights, self._fixed_bytes = all_weights, fixed

    # --- per-step channel selection -------------------------------------------------------------
    def _choose(self, name: str, step: int) -> Tensor:
        """The sorted channels layer ``name`` trains at ``step`` (CPU LongTensor)."""
        state = self._state[name]
        n, order = state["n"], state["order"]
        total = order.numel()
        if n == total:
            return torch.arange(total)
        if self.policy == "rotation":
            return torch.sort(order[(step * n + torch.arange(n)) % total]).values
        stale_count = min(n, math.ceil(self.floor * n))
        stale = torch.sort(state["last"], stable=True).indices[:stale_count]  # least recently trained first
        weights = state["scores"].double().clamp_min(0)
        weights = weights + 1e-12 * float(weights.max()) + 1e-300  # every channel can be drawn
        weights[stale] = 0
        drawn = torch.multinomial(weights, n - stale_count, replacement=False, generator=state["generator"])
        return torch.sort(torch.cat([stale, drawn])).values

    def start_step(self, model: nn.Module, optimizer, step: int) -> None:
        if not self._state:
            return
        resumed = not self._started and step != self._step  # a resumed run's first step: state not ours
        self._started = True
        if resumed:
            warnings.warn(f"dynamic sparse update resumed at step {step}: the optimizer state of the trained channels "
                          f"restarts from zero (parked state is not in checkpoints)", stacklevel=2)
        if step == self._step:
            return  # the set-up's own step, or the same step again (an accumulated micro-batch)
        for name, state in self._state.items():
            conv = resolve(model, name)
            new = self._choose(name, step)
            self._move_state(optimizer, conv, state["parked"], new.to(conv.channels.device), reset=resumed)
            conv.select(new.tolist())
            state["last"][new] = step
        self._step = step

    @staticmethod
    @torch.no_grad()
    def _move_state(optimizer, conv: SparseConv2d, parked: dict[str, Tensor], new: Tensor, reset: bool) -> None:
        """Park the leaving channels' per-element optimizer state and bring back the arriving ones'."""
        if optimizer is None:
            return
        state = optimizer.state.get(conv.weight_update, {})
        dim = channel_dim(conv.groups)
        for key, value in state.items():
            if not (torch.is_tensor(value) and value.shape == conv.weight_update.shape):
                continue  # e.g. a step count: shared by the Parameter's channels
            if reset:
                value.zero_()
                continue
            store = parked.setdefault(key, torch.zeros(conv.weight.shape, dtype=value.dtype, device=value.device))
            store.index_copy_(dim, conv.channels, value)
            value.copy_(store.index_select(dim, new))

    def after_backward(self, model: nn.Module, step: int) -> None:
        if self.policy != "importance":
            return
        for name, state in self._state.items():
            conv = resolve(model, name)
            grad = conv.weight_update.grad
            if grad is None:
                continue
            per_weight = (_channel_sums(grad.detach().float().pow(2), conv.groups) / _per_channel(conv)).cpu()
            idx = conv.channels.cpu()
            state["scores"][idx] = self.score_decay * state["scores"][idx] + (1 - self.score_decay) * per_weight

    def coverage(self) -> dict[str, float]:
        """Per chosen layer, the fraction of its channels trained at least once since :meth:`apply`."""
        return {name: float((state["last"] >= 0).float().mean()) for name, state in self._state.items()}

    def metrics(self) -> dict[str, float]:
        """``Coverage``: the share of the chosen layers' channels trained at least once so far."""
        if not self._state:
            return {}
        trained = sum(int((state["last"] >= 0).sum()) for state in self._state.values())
        return {"Coverage": trained / sum(state["last"].numel() for state in self._state.values())}

    def rotation_period(self) -> dict[str, int]:
        """Per chosen layer, steps within which every channel trains at least once."""
        out = {}
        for name, state in self._state.items():
            n, total = state["n"], state["order"].numel()
            slots = n if self.policy == "rotation" or n == total else math.ceil(self.floor * n)
            out[name] = math.ceil(total / slots)
        return out

    # --- description --------------------------------------------------------------------------
    def memory(self) -> dict[str, int]:
        """Bytes one step holds (batch 1, the budget's model) and the same for dense training of the same layers:
        ``activation``, ``gradient``, ``step`` (their sum, the budget's quantity), ``dense_activation``,
        ``dense_gradient``, ``dense_step``; ``weights`` trained per step and ``all_weights`` of the network's convs."""
        if not self.plan_:
            raise RuntimeError("memory() describes the method after apply()")
        act = sum(p["activation_bytes"] for p in self.plan_)
        grad = sum(p["gradient_bytes"] for p in self.plan_) + self._fixed_bytes
        dense_act = sum(p["dense_activation_bytes"] for p in self.plan_)
        dense_grad = sum(p["dense_gradient_bytes"] for p in self.plan_) + self._fixed_bytes
        return {"activation": act, "gradient": grad, "step": act + grad, "dense_activation": dense_act,
                "dense_gradient": dense_grad, "dense_step": dense_act + dense_grad,
                "weights": sum(p["weights"] for p in self.plan_), "all_weights": self._all_weights}

    def summary(self) -> str:
        """The chosen layers and their costs as a Markdown table, with the totals."""
        if not self.plan_:
            return ""
        period = self.rotation_period()
        lines = ["| conv | layer | channels/step | importance | kept KB | grad KB | every channel within |",
                 "|---|---|---|---|---|---|---|"]
        for p in self.plan_:
            imp = "-" if p["importance"] is None else f"{p['importance']:.3g}"
            lines.append(f"| {p['index']} | {p['name']} | {p['channels']}/{p['of']} | {imp} | "
                         f"{p['activation_bytes'] / 1024:.1f} | {p['gradient_bytes'] / 1024:.1f} | "
                         f"{period[p['name']]} steps |")
        m = self.memory()
        budget = "none" if self.budget is None else f"{self.budget / 1024:.1f} KB"
        lines.append(f"\nper step: {m['weights']} of {m['all_weights']} conv weights "
                     f"({100 * m['weights'] / m['all_weights']:.2f} %), kept activations "
                     f"{m['activation'] / 1024:.1f} KB (dense training of these layers: "
                     f"{m['dense_activation'] / 1024:.1f} KB), step memory {m['step'] / 1024:.1f} KB of "
                     f"budget {budget}")
        return "\n".join(lines)

    @property
    def tag(self) -> str:
        """``dyn-<policy>-u<ratio>[-<budget>][-custom-<digest>]``."""
        budget = "" if self.memory_budget is None else "-" + re.sub(r"\s+", "", str(self.memory_budget))
        custom = f"-custom-{config_digest(self._init_args)}" if self.manual_weight_idx is not None else ""
        return f"dyn-{self.policy}-u{self.update_ratio:g}{budget}{custom}"

    def fields(self) -> dict[str, Any]:
        layers = len(self.plan_) or (len(self.manual_weight_idx) if self.manual_weight_idx else "by budget")
        return {"method": self.tag, "layers": layers, "patch_size": "-"}
