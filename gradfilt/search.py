"""Budgeted configuration search, after FLASH (Li, Mandal, Ogras, Marculescu, CODES+ISSS 2021).

Which of the last K convs train, and with which gradient (exact, or filtered with patch size r),
so that predicted accuracy is highest under budgets on activation memory, backward FLOPs and
measured backward latency. A *configuration* is one choice index per searched layer, in forward
order (earliest first): 0 frozen, 1 vanilla BP, 2.. the patch sizes of the space. The classifier
always trains (the paper's "#Layers" convention).

The pieces, each usable on its own:

* :class:`SearchSpace` -- the searched layers (:func:`search_space`: the last K main-path convs)
  and the patch sizes; labels such as ``____VV24`` (``_`` frozen, ``V`` vanilla, a digit r).
* :class:`CostTables` (:func:`cost_tables`) -- exact costs of every configuration from the cost
  model (:mod:`gradfilt.cost`). The searched convs form a chain, so a configuration's cost is a
  sum of per-layer terms given the earliest trained layer e (which decides which layers need their
  input gradient): ``cost = sum_i own[i, c_i, e] + rest[e]``. Tests check the tables against
  :func:`gradfilt.cost.estimate_configured` of the configured model.
* :class:`LatencyModel` -- per-layer backward latency fitted on measurements (the latency
  benchmark's ``conv.csv``): per kind (torch's conv backward, the filtered backward) a
  non-negative least-squares fit of time on FLOPs and on the elements read and written, with its
  fit error and leave-one-out error.
* :func:`gradient_fidelity` -- the training-free accuracy proxy: per layer and patch size, the
  cosine similarity between the filtered and the exact weight gradient (the quantity behind the
  paper's Proposition 1) on a few real batches; 1 for vanilla, 0 for frozen.
  :class:`AccuracyPredictor` scores a configuration by the proxy (sum over trained layers: depth
  weighted by gradient fidelity) or, fitted on a few measured fine-tunes (FLASH's few-sample
  predictor), by a ridge regression on [proxy, depth] with its cross-validated rank correlation.
* :func:`search` -- FLASH's hierarchical SHGO: depth first (the earliest trained layer, each
  value in turn), then ``scipy.optimize.shgo`` over a continuous relaxation of the per-layer
  choices (levels ordered by cost, costs and scores interpolated linearly between them), rounded
  to the neighbouring integer configurations and polished by moves of up to three layers, every candidate
  checked against the exact tables; :func:`exhaustive` enumerates the whole space (vectorized) to
  check it. :func:`method_config` turns a configuration into the classification CLI's method
  config; :func:`pareto_front` gives the best predicted accuracy per memory.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .cost import _image_size, _trace, conv_cost, emp_conv_cost, linear_cost
from .emp import channel_scores, kept_channels
from .freeze import classifier_of
from .functional import check_patch_size, filtered_conv2d
from .trace import LayerCall, trace_layers

__all__ = ["SearchSpace", "search_space", "CostTables", "cost_tables", "LatencyModel", "gradient_fidelity",
           "gradient_fidelities", "AccuracyPredictor", "SearchResult", "NoConfigurationFits", "search", "search_knob",
           "exhaustive", "pareto_front", "method_config", "method_tag", "run_from_tag", "config_from_tag",
           "sample_configs", "spearman", "parse_budget", "budget_text", "BUDGETS", "EXHAUSTIVE_LIMIT"]

FROZEN, VANILLA = 0, 1
EXHAUSTIVE_LIMIT = 10 ** 7  # search(check=True) enumerates spaces up to this many configurations
BUDGETS = {"memory": "activation_bytes", "flops": "backward_flops", "latency": "latency_ms"}  # budget name -> metric
_SYMBOLS = {FROZEN: "_", VANILLA: "V"}


# --- the space ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    """The searched layers and the choices each has.

    Attributes:
        layers: dotted conv names, forward order (earliest first).
        patch_sizes: the filtered choices' r (choice index 2 + j is ``patch_sizes[j]``); r = 1 is the
            filtered op with 1x1 patches, whose gradient is the exact one on stride-1 convs (a check of
            the proxy; a strided conv's filter collapses its kernel even then, see gradfilt.functional).
        classifier: the classifier layer (always trained).
    """

    layers: tuple[str, ...]
    patch_sizes: tuple[int, ...]
    classifier: str

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a search space needs at least one layer")
        for r in self.patch_sizes:
            check_patch_size(r)
            if r > 9:
                raise ValueError(f"searched patch sizes are 1..9 (one character in a label), got {r}")
        if len(set(self.patch_sizes)) != len(self.patch_sizes):
            raise ValueError(f"patch sizes repeat: {self.patch_sizes}")

    @property
    def n_choices(self) -> int:
        return 2 + len(self.patch_sizes)

    @property
    def size(self) -> int:
        """Number of configurations."""
        return self.n_choices ** len(self.layers)

    def patch_size(self, choice: int) -> Optional[int]:
        """r of a choice index (None for frozen and vanilla)."""
        return self.patch_sizes[choice - 2] if choice >= 2 else None

    def label(self, config: Sequence[int], alpha: float = 1.0) -> str:
        """``_`` frozen, ``V`` vanilla, r filtered; one character per layer, earliest first (usable as a run
        name); ``-a<alpha>`` after it when the trained convs prune their error map (EMP)."""
        self.check(config)
        text = "".join(_SYMBOLS.get(int(c), str(self.patch_size(int(c)))) for c in config)
        return text if alpha == 1 else f"{text}-a{alpha:g}"

    def parse_run(self, label: str) -> tuple[tuple[int, ...], float]:
        """(configuration, EMP alpha) of a :meth:`label` with or without its ``-a<alpha>``."""
        text, sep, alpha = label.partition("-a")
        try:
            value = float(alpha) if sep else 1.0
        except ValueError:
            value = -1.0
        if not 0 < value <= 1:
            raise ValueError(f"{label!r}: the EMP share after -a must be a number in (0, 1]")
        return self.parse(text), value

    def parse(self, label: str) -> tuple[int, ...]:
        """The configuration of a :meth:`label` (without an EMP share)."""
        by_symbol = {"_": FROZEN, "V": VANILLA, **{str(r): 2 + j for j, r in enumerate(self.patch_sizes)}}
        if len(label) != len(self.layers) or any(s not in by_symbol for s in label):
            raise ValueError(f"{label!r} is not a configuration label of this space: {len(self.layers)} characters "
                             f"from {sorted(by_symbol)}")
        return tuple(by_symbol[s] for s in label)

    def check(self, config: Sequence[int]) -> None:
        if len(config) != len(self.layers) or any(not 0 <= int(c) < self.n_choices for c in config):
            raise ValueError(f"a configuration has {len(self.layers)} choices in [0, {self.n_choices}), "
                             f"got {tuple(config)}")

    def all_configs(self) -> np.ndarray:
        """Every configuration, (size, K) int8, in lexicographic order."""
        k = len(self.layers)
        grids = np.indices((self.n_choices,) * k, dtype=np.int8)
        return grids.reshape(k, -1).T.copy()


def search_space(model: nn.Module, example_input: Tensor, last: int, patch_sizes: Sequence[int] = (2, 4, 7)
                 ) -> SearchSpace:
    """The last ``last`` main-path convs of ``model`` (the paper's "#Layers" order) and ``patch_sizes``.

    Args:
        model: the network as the run sees it before a method is applied (BN folded if it folds).
        example_input: one input batch.
        last: K, how many convs the search covers.
        patch_sizes: r values of the filtered choices.
    """
    calls = trace_layers(model, example_input)
    convs = [c.name for c in calls if isinstance(c.module, nn.Conv2d) and not c.shortcut]
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= len(convs):
        raise ValueError(f"last must be an int in [1, {len(convs)}] (the model's main-path convs), got {last!r}")
    return SearchSpace(tuple(convs[-last:]), tuple(int(r) for r in patch_sizes), classifier_of(calls))


def earliest(configs: np.ndarray) -> np.ndarray:
    """Index of the earliest trained layer per configuration (K when none trains)."""
    configs = np.atleast_2d(configs)
    trained = configs != FROZEN
    k = configs.shape[1]
    return np.where(trained.any(1), trained.argmax(1), k)


# --- exact costs --------------------------------------------------------------------------------
@dataclass
class CostTables:
    """Exact per-layer decomposition of every configuration's costs.

    Attributes:
        space: the search space.
        own: metric -> (K, n_choices, K + 1) cost of layer i with choice c when the earliest trained
            layer is e (entries with c != frozen for i < e are never used).
        rest: metric -> (K + 1,) cost of every other layer (shortcut convs, earlier frozen convs, the
            classifier) given e.
        batch_size: images per step the FLOPs and bytes are counted for.
        alpha: error-map pruning's kept share on the trained dense convs (1: no pruning).
    """

    space: SearchSpace
    own: dict[str, np.ndarray]
    rest: dict[str, np.ndarray]
    batch_size: int = 1
    alpha: float = 1.0

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.own)

    def evaluate(self, configs: Union[Sequence[int], np.ndarray]) -> dict[str, np.ndarray]:
        """metric -> cost of each configuration (rows of ``configs``)."""
        configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
        e = earliest(configs)
        rows = np.arange(configs.shape[1])
        return {m: self.own[m][rows[None, :], configs, e[:, None]].sum(1) + self.rest[m][e] for m in self.metrics}

    @staticmethod
    def fits(costs: Mapping[str, np.ndarray], budgets: Mapping[str, float]) -> np.ndarray:
        """Which of the configurations whose :meth:`evaluate` costs these are stay within every budget."""
        return np.all([np.asarray(costs[m]) <= limit * (1 + 1e-12) for m, limit in budgets.items()], axis=0)


def _grad_flags(model: nn.Module, space: SearchSpace, example: Tensor) -> list[dict[str, bool]]:
    """For each earliest trained layer e (K: none), which traced layers' inputs need a gradient."""
    probe = copy.deepcopy(model)
    modules = dict(probe.named_modules())
    flags = []
    for e in range(len(space.layers) + 1):
        for p in probe.parameters():
            p.requires_grad_(False)
        for p in modules[space.classifier].parameters():
            p.requires_grad_(True)
        if e < len(space.layers):
            modules[space.layers[e]].weight.requires_grad_(True)
        flags.append({c.name: c.grad_input for c in trace_layers(probe, example)})
        later = [name for name in space.layers[e + 1:] if not flags[-1][name]]
        if later:
            raise ValueError(f"the searched layers do not form a chain: training {space.layers[e]} gives no "
                             f"gradient to {later}")
    return flags


def cost_tables(model: nn.Module, space: SearchSpace, image_size: Union[int, Sequence[int]],
                batch_size: int = 1, in_channels: int = 3, latency: Optional["LatencyModel"] = None,
                alpha: float = 1.0) -> CostTables:
    """Activation bytes and backward FLOPs (and, with ``latency``, predicted backward ms) of every configuration.

    With ``alpha`` < 1 every trained dense conv is an error-map-pruning layer keeping that share of its
    output channels (:class:`gradfilt.methods.ErrorMapPruning`; FLOPs from
    :func:`gradfilt.cost.emp_conv_cost`, bytes unchanged). Its latency is taken as the unpruned layer's:
    pruning's gain in time depends on the hardware (on a 2-core CPU it measured none), so the latency
    table does not assume one.

    Args:
        model: the network before a method is applied.
        space: the search space.
        image_size: S or (H, W).
        batch_size: images per step for bytes and FLOPs (the paper's columns use 1).
        in_channels: channels of the input image.
        latency: a fitted :class:`LatencyModel`; its table is at the batch it was measured with.
        alpha: error-map pruning's kept share of output channels on the trained dense convs; 1: none.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"alpha (the kept share of output channels) must be in (0, 1], got {alpha!r}")
    h, w = _image_size(image_size)
    calls = _trace(model, h, w, in_channels)
    by_name = {c.name: c for c in calls}
    missing = [n for n in (*space.layers, space.classifier) if n not in by_name]
    if missing:
        raise ValueError(f"layers {missing} of the search space are not run by the model's forward pass")
    flags = _grad_flags(model, space, torch.zeros(1, in_channels, h, w))
    k, n = len(space.layers), space.n_choices
    searched = set(space.layers)

    def layer_terms(cost_of: Callable[[LayerCall, Optional[int], bool, bool], float]):
        own = np.zeros((k, n, k + 1))
        rest = np.zeros(k + 1)
        for e, flag in enumerate(flags):
            for i, name in enumerate(space.layers):
                for c in range(n):
                    own[i, c, e] = cost_of(by_name[name], space.patch_size(c), flag[name], c != FROZEN)
            rest[e] = sum(cost_of(call, None, flag[call.name], call.name == space.classifier)
                          for call in calls if call.name not in searched)
        return own, rest

    def flops(call, r, grad_input, trains):
        if isinstance(call.module, nn.Linear):
            return linear_cost(call, grad_input, batch_size, weight=trains)
        if alpha < 1 and trains and call.module.groups == 1:  # ErrorMapPruning prunes the trained dense convs
            return emp_conv_cost(call, alpha, r, grad_input, batch_size)
        return conv_cost(call, r, grad_input, batch_size, weight=trains)[0]

    def kept_bytes(call, r, grad_input, trains):
        return conv_cost(call, r, grad_input, batch_size, weight=trains)[1] if isinstance(call.module, nn.Conv2d) else 0

    own, rest = {}, {}
    own["backward_flops"], rest["backward_flops"] = layer_terms(flops)
    own["activation_bytes"], rest["activation_bytes"] = layer_terms(kept_bytes)
    if latency is not None:
        own["latency_ms"], rest["latency_ms"] = layer_terms(latency.layer_ms)
    return CostTables(space, own, rest, batch_size, float(alpha))


# --- latency ------------------------------------------------------------------------------------
def _conv_call(row: Mapping) -> LayerCall:
    """A LayerCall for a benchmark row's geometry (the conv on the meta device: no memory)."""
    g = {k: int(row[k]) for k in ("c_in", "c_out", "h", "w", "kernel", "stride", "padding", "dilation", "groups")}
    conv = nn.Conv2d(g["c_in"], g["c_out"], g["kernel"], g["stride"], g["padding"], g["dilation"], g["groups"],
                     device="meta")
    out_shape = conv(torch.empty(1, g["c_in"], g["h"], g["w"], device="meta")).shape[1:]
    return LayerCall(str(row.get("case", "")), conv, (g["c_in"], g["h"], g["w"]), tuple(out_shape), False)


@dataclass
class LatencyModel:
    """Backward milliseconds of one layer, fitted per kind on measured conv backwards.

    ``ms = a + b * MFLOPs + c * M elements + d * M weights (strided layers)`` with a, b, c, d >= 0,
    where FLOPs are the cost model's for the layer's backward, elements are those of its input and
    output maps (read and written) and the last term is the weight size of a strided conv (whose
    backward works per stride phase). Kinds: ``vanilla`` (torch's conv backward; also used for a
    frozen layer's input gradient) and ``filtered`` (every patch size). Linear layers cost their
    FLOPs at the vanilla rate. Convs with fewer than ``min_channels`` input channels (an RGB stem,
    whose weight gradient takes a path of its own in torch and which the search does not cover) are
    left out of the fit.

    Attributes:
        coef: kind -> (a, b, c, d).
        batch_size: the batch the measurements were taken at.
        fit_error: kind -> mean absolute relative error on the measurements.
        loo_error: kind -> the same, each measurement predicted by a fit without it.
        points: kind -> number of measurements.
    """

    coef: dict[str, tuple[float, ...]]
    batch_size: int
    fit_error: dict[str, float] = field(default_factory=dict)
    loo_error: dict[str, float] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _features(call: LayerCall, r: Optional[int], grad_input: bool, trains: bool, batch: int) -> np.ndarray:
        flops = conv_cost(call, r, grad_input, batch, weight=trains)[0]
        elements = batch * (math.prod(call.in_shape) + math.prod(call.out_shape))
        strided = call.module.weight.numel() if max(call.module.stride) > 1 else 0
        return np.array([1.0, flops / 1e6, elements / 1e6, strided / 1e6])

    @classmethod
    def fit(cls, rows: Iterable[Mapping], min_channels: int = 8) -> "LatencyModel":
        """Fit on the latency benchmark's conv rows (``python -m latency --out DIR``: ``DIR/conv.csv``).

        Each row needs the geometry (c_in, c_out, h, w, kernel, stride, padding, dilation, groups),
        batch, patch_size, torch_ms and filtered_ms. A case appears once per patch size; its torch
        time is used once.
        """
        from scipy.optimize import nnls

        data: dict[str, list[tuple[np.ndarray, float]]] = {"vanilla": [], "filtered": []}
        seen, batches = set(), set()
        for row in rows:
            if int(row["c_in"]) < min_channels:
                continue
            call, batch = _conv_call(row), int(row["batch"])
            batches.add(batch)
            if row.get("case") not in seen:
                seen.add(row.get("case"))
                data["vanilla"].append((cls._features(call, None, True, True, batch), float(row["torch_ms"])))
            r = int(row["patch_size"])
            data["filtered"].append((cls._features(call, r, True, True, batch), float(row["filtered_ms"])))
        if len(batches) != 1:
            raise ValueError(f"latency rows must share one batch size, got {sorted(batches)}")
        model = cls({}, batches.pop())
        for kind, points in data.items():
            if len(points) < 4:
                raise ValueError(f"fitting the {kind} latency needs at least 4 measurements, got {len(points)}")
            x = np.stack([p[0] for p in points])
            y = np.array([p[1] for p in points])
            scale = np.maximum(x.max(0), 1e-12)
            coef = nnls(x / scale, y)[0] / scale
            model.coef[kind] = tuple(float(v) for v in coef)
            model.fit_error[kind] = float(np.mean(np.abs(x @ coef - y) / y))
            loo = []
            for j in range(len(y)):
                keep = np.arange(len(y)) != j
                c = nnls(x[keep] / scale, y[keep])[0] / scale
                loo.append(abs(x[j] @ c - y[j]) / y[j])
            model.loo_error[kind] = float(np.mean(loo))
            model.points[kind] = len(y)
        return model

    def layer_ms(self, call: LayerCall, r: Optional[int], grad_input: bool, trains: bool) -> float:
        """Predicted backward ms of one layer (0 when it takes no part in the backward)."""
        if not (trains or grad_input):
            return 0.0
        if isinstance(call.module, nn.Linear):
            return self.coef["vanilla"][1] * linear_cost(call, grad_input, self.batch_size, weight=trains) / 1e6
        kind = "filtered" if r is not None and trains else "vanilla"
        return float(np.dot(self.coef[kind], self._features(call, r if trains else None, grad_input, trains,
                                                             self.batch_size)))

    def describe(self) -> str:
        return "; ".join(f"{kind}: ms = {a:.3g} + {b:.3g}/MFLOP + {c:.3g}/M elements + {d:.3g}/M strided weights, "
                         f"fit error {100 * self.fit_error[kind]:.1f} %, "
                         f"leave-one-out {100 * self.loo_error[kind]:.1f} % "
                         f"({self.points[kind]} measurements)" for kind, (a, b, c, d) in self.coef.items())


# --- accuracy ----------------------------------------------------------------------------------
def gradient_fidelity(model: nn.Module, space: SearchSpace, batches: Iterable[tuple[Tensor, Tensor]],
                      loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy, alpha: float = 1.0,
                      g1: float = 0.0, g2: float = 1.0) -> np.ndarray:
    """Per searched layer and choice, the cosine similarity of the filtered and the exact weight gradient.

    Every searched layer and the classifier train with exact BP; on each batch, the exact output
    gradient g_y of each searched conv gives its exact weight gradient and, for each patch size,
    the filtered one (the layer's own filter on the exact g_y, as in the paper's Proposition 1).
    The similarities are averaged over the batches. Frozen is 0, vanilla is 1.

    With ``alpha`` < 1 the trained dense convs prune their error map as
    :class:`gradfilt.methods.ErrorMapPruning` does (channel scores ``g1 * ||W_j||_1 + g2 * ||g_y,j||_1``,
    the top ``ceil(alpha * C_out)`` kept): the weight gradient of the other channels is zero, for
    vanilla and filtered choices alike.

    Args:
        model: the network (not changed).
        space: the search space.
        batches: (inputs, targets) pairs.
        loss_fn: the training loss.
        alpha, g1, g2: error-map pruning (alpha 1: none).

    Returns:
        (K, n_choices) array.
    """
    return gradient_fidelities(model, space, batches, (alpha,), loss_fn, g1, g2)[alpha]


def gradient_fidelities(model: nn.Module, space: SearchSpace, batches: Iterable[tuple[Tensor, Tensor]],
                        alphas: Sequence[float], loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                        g1: float = 0.0, g2: float = 1.0) -> dict[float, np.ndarray]:
    """:func:`gradient_fidelity` at each of ``alphas`` from one pass over the batches: alpha -> (K, n_choices)."""
    net = copy.deepcopy(model).eval()
    modules = dict(net.named_modules())
    for p in net.parameters():
        p.requires_grad_(False)
    for name in (*space.layers, space.classifier):
        for p in modules[name].parameters():
            p.requires_grad_(True)
    seen: dict[str, list] = {}

    def keep(name: str):
        def hook(module, args, output):
            output.retain_grad()
            seen[name] = [args[0].detach(), output]
            return output.clone()  # what follows may work in place (ReLU(inplace=True)); g_y stays the conv's
        return hook

    def cosine(grad: Tensor, exact: Tensor) -> float:
        return F.cosine_similarity(grad.flatten(), exact.flatten(), dim=0).item()

    handles = [modules[name].register_forward_hook(keep(name)) for name in space.layers]
    sums = {alpha: np.zeros((len(space.layers), space.n_choices)) for alpha in alphas}
    count = 0
    try:
        for inputs, targets in batches:
            seen.clear()
            net.zero_grad(set_to_none=True)
            loss_fn(net(inputs), targets).backward()
            for i, name in enumerate(space.layers):
                conv, (x, y) = modules[name], seen[name]
                exact = conv.weight.grad.double()
                grads = {VANILLA: exact}
                for c in range(2, space.n_choices):
                    weight = conv.weight.detach().requires_grad_(True)
                    with torch.enable_grad():
                        out = filtered_conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups,
                                              patch_size=space.patch_size(c))
                        grads[c] = torch.autograd.grad(out, weight, y.grad)[0].double()
                for alpha in alphas:
                    mask = torch.ones(conv.out_channels, dtype=torch.float64)
                    if alpha < 1 and conv.groups == 1:  # EMP keeps the top-scored output channels only
                        mask.zero_()[kept_channels(channel_scores(conv.weight.detach(), y.grad, g1, g2), alpha)] = 1
                    mask = mask.view((-1,) + (1,) * (exact.dim() - 1))
                    for c, grad in grads.items():
                        sums[alpha][i, c] += cosine(grad * mask, exact)
            count += 1
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise ValueError("gradient_fidelity needs at least one batch")
    return {alpha: total / count for alpha, total in sums.items()}  # frozen stays 0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@dataclass
class AccuracyPredictor:
    """Predicted accuracy of configurations.

    The features of a configuration are ``proxy = sum over trained layers of fidelity[i, c_i]``
    (depth weighted by gradient fidelity; the training-free predictor) and ``depth`` (trained
    layers). Without ``coef`` the prediction is the proxy; :meth:`fit` learns
    ``accuracy = coef . [1, proxy, depth]`` (ridge) from measured fine-tunes.

    Attributes:
        fidelity: (K, n_choices) from :func:`gradient_fidelity` (no pruning).
        coef: regression coefficients, or None.
        by_alpha: error-map pruning's kept share alpha < 1 -> the fidelity with that pruning; the
            features of a configuration trained with EMP at alpha use it.
        cv_spearman: leave-one-out rank correlation of the fitted predictor's held-out predictions
            with the measured accuracies; proxy_spearman: the proxy's own, on the same points.
    """

    fidelity: np.ndarray
    coef: Optional[np.ndarray] = None
    cv_spearman: Optional[float] = None
    proxy_spearman: Optional[float] = None
    cv_mae: Optional[float] = None
    samples: int = 0
    by_alpha: dict = field(default_factory=dict)

    def at(self, alpha: float) -> "AccuracyPredictor":
        """The predictor for configurations trained with error-map pruning at ``alpha`` (1: none)."""
        if alpha == 1:
            return self
        if alpha not in self.by_alpha:
            raise ValueError(f"no gradient fidelity for alpha {alpha}; known: {sorted(self.by_alpha) + [1.0]}")
        return replace(self, fidelity=self.by_alpha[alpha], by_alpha={})

    def features(self, configs: Union[Sequence[int], np.ndarray], alphas: Optional[Sequence[float]] = None
                 ) -> np.ndarray:
        """(N, 2): proxy and depth of each configuration (trained with EMP at ``alphas``, default none)."""
        configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
        rows = np.arange(configs.shape[1])
        alphas = np.ones(len(configs)) if alphas is None else np.asarray(alphas, dtype=float)
        proxy = np.zeros(len(configs))
        for alpha in np.unique(alphas):
            pick = alphas == alpha
            proxy[pick] = self.at(float(alpha)).fidelity[rows[None, :], configs[pick]].sum(1)
        return np.stack([proxy, (configs != FROZEN).sum(1)], 1).astype(float)

    def predict(self, configs: Union[Sequence[int], np.ndarray], alphas: Optional[Sequence[float]] = None
                ) -> np.ndarray:
        feats = self.features(configs, alphas)
        if self.coef is None:
            return feats[:, 0]
        return self.coef[0] + feats @ self.coef[1:]

    @staticmethod
    def _ridge(feats: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
        mean, std = feats.mean(0), feats.std(0)
        std = np.where(std > 0, std, 1.0)
        z = (feats - mean) / std
        beta = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (y - y.mean()))
        slopes = beta / std
        return np.concatenate([[y.mean() - mean @ slopes], slopes])

    def fit(self, configs: Sequence[Sequence[int]], accuracies: Sequence[float], ridge: float = 1.0,
            alphas: Optional[Sequence[float]] = None) -> "AccuracyPredictor":
        """A copy fitted on measured (configuration, accuracy) pairs, with leave-one-out checks.

        Args:
            configs: the measured configurations.
            accuracies: their measured accuracies.
            ridge: L2 penalty on the standardized slopes.
            alphas: EMP's alpha each was trained with (default: none pruned).
        """
        configs = np.asarray(configs, dtype=np.int64)
        y = np.asarray(accuracies, dtype=float)
        if len(y) < 4 or len(y) != len(configs):
            raise ValueError(f"fitting the accuracy predictor needs at least 4 (configuration, accuracy) pairs, "
                             f"got {len(configs)} configurations and {len(y)} accuracies")
        feats = self.features(configs, alphas)
        held_out = np.empty_like(y)
        for j in range(len(y)):
            keep = np.arange(len(y)) != j
            coef = self._ridge(feats[keep], y[keep], ridge)
            held_out[j] = coef[0] + feats[j] @ coef[1:]
        return AccuracyPredictor(self.fidelity, self._ridge(feats, y, ridge), spearman(held_out, y),
                                 spearman(feats[:, 0], y), float(np.mean(np.abs(held_out - y))), len(y),
                                 self.by_alpha)


# --- the search --------------------------------------------------------------------------------
def parse_budget(text: str) -> tuple[str, float]:
    """``memory=16KB``, ``flops=8M``, ``latency=12`` (ms) -> (metric, value)."""
    name, sep, value = text.partition("=")
    if not sep or name not in BUDGETS:
        raise ValueError(f"a budget is memory=<bytes>, flops=<count> or latency=<ms> (e.g. memory=16KB, flops=8M), "
                         f"got {text!r}")
    units = {"KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1, "": 1}
    value = value.strip()
    for suffix in sorted(units, key=len, reverse=True):
        if value.upper().endswith(suffix):
            try:
                number = float(value[:len(value) - len(suffix)]) * units[suffix]
            except ValueError:
                break
            if number <= 0:
                break
            return BUDGETS[name], number
    raise ValueError(f"budget {text!r}: the value must be a positive number with an optional unit "
                     f"(KB, MB, GB for memory; K, M, G for FLOPs)")


class NoConfigurationFits(ValueError):
    """No configuration of the space stays within the budgets."""


def _beats(a: float, b: float) -> bool:
    """Prediction ``a`` is higher than ``b`` by more than rounding."""
    return a > b + 1e-9 * max(1.0, abs(b))


@dataclass
class SearchResult:
    """The chosen configuration and how it was found.

    Attributes:
        config: one choice per searched layer.
        label: :meth:`SearchSpace.label` of it.
        predicted: its predicted accuracy.
        costs: metric -> exact cost.
        seconds: search time.
        evaluated: configurations whose exact costs were looked up.
        exhaustive: the exhaustive optimum's label, predicted accuracy and seconds (when checked).
        alpha: error-map pruning's kept share on the trained dense convs (1: none).
    """

    config: tuple[int, ...]
    label: str
    predicted: float
    costs: dict[str, float]
    seconds: float
    evaluated: int
    exhaustive: Optional[dict] = None
    alpha: float = 1.0


def _check_budgets(tables: CostTables, budgets: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(budgets) - set(tables.metrics))
    if unknown:
        hint = " (latency needs a fitted LatencyModel in cost_tables)" if "latency_ms" in unknown else ""
        raise ValueError(f"budgets on {unknown} cannot be checked: the tables have {list(tables.metrics)}{hint}")
    if not budgets:
        raise ValueError(f"give at least one budget, on {list(tables.metrics)}")
    return {m: float(v) for m, v in budgets.items()}


def _best(configs: np.ndarray, tables: CostTables, predictor: AccuracyPredictor, budgets: Mapping[str, float]
          ) -> Optional[int]:
    """Row of the best feasible configuration: highest prediction, then least memory, fewest FLOPs, and the
    smallest choice indices from the last layer on; None when none fits."""
    costs = tables.evaluate(configs)
    feasible = tables.fits(costs, budgets)
    if not feasible.any():
        return None
    pred = np.where(feasible, predictor.predict(configs), -np.inf)
    top = pred.max()
    ties = np.flatnonzero(pred >= top - 1e-9 * max(1.0, abs(top)))
    # equal predictions: least memory, then fewest FLOPs, then the smallest choices (finer patches) first
    keys = [configs[ties, j] for j in range(configs.shape[1] - 1, -1, -1)]
    order = np.lexsort((*keys, costs["backward_flops"][ties], costs["activation_bytes"][ties]))
    return int(ties[order[0]])


def _result(config: np.ndarray, tables: CostTables, predictor: AccuracyPredictor, seconds: float, evaluated: int
            ) -> SearchResult:
    costs = {m: float(v[0]) for m, v in tables.evaluate(config).items()}
    return SearchResult(tuple(int(c) for c in config), tables.space.label(config, tables.alpha),
                        float(predictor.predict(config)[0]), costs, seconds, evaluated, alpha=tables.alpha)


def exhaustive(tables: CostTables, predictor: AccuracyPredictor, budgets: Mapping[str, float]) -> SearchResult:
    """The best configuration by enumerating the whole space (vectorized; 5^8 = 390,625 take well under a second)."""
    budgets = _check_budgets(tables, budgets)
    predictor = predictor.at(tables.alpha)
    start = time.perf_counter()
    configs = tables.space.all_configs()
    row = _best(configs, tables, predictor, budgets)
    if row is None:
        raise NoConfigurationFits(f"no configuration fits the budgets {budgets}")
    return _result(configs[row], tables, predictor, time.perf_counter() - start, len(configs))


def _levels(tables: CostTables) -> np.ndarray:
    """Choices per layer ordered by activation memory (ties: by FLOPs): the relaxation's integer levels."""
    order = []
    k = len(tables.space.layers)
    for i in range(k):
        mem, flops = tables.own["activation_bytes"][i, :, 0], tables.own["backward_flops"][i, :, 0]
        order.append(sorted(range(tables.space.n_choices), key=lambda c: (c != FROZEN, mem[c], flops[c], -c)))
    return np.array(order)


def _polish(starts: np.ndarray, tables: CostTables, predictor: AccuracyPredictor, budgets: Mapping[str, float]
            ) -> tuple[np.ndarray, int]:
    """Improve each start by its best change of up to three layers until none helps; the best result and the
    number of configurations costed."""
    k, n = starts.shape[1], tables.space.n_choices
    # every change of up to three layers, as the new choices with -1 where a layer keeps its own
    changes = []
    for size in (1, 2, 3):
        for rows in itertools.combinations(range(k), size):
            values = np.array(list(itertools.product(range(n), repeat=size)))
            block = np.full((len(values), k), -1)
            block[:, list(rows)] = values
            changes.append(block)
    changes = np.concatenate(changes)
    finished, evaluated = [], 0
    for best in starts:
        while True:  # a move equal to the current configuration never displaces row 0 (lexsort is stable)
            moves = np.where(changes >= 0, changes, best)
            evaluated += len(moves)
            row = _best(np.concatenate([best[None, :], moves]), tables, predictor, budgets)
            if row == 0:
                break
            best = moves[row - 1]
        finished.append(best)
    return np.stack(finished)[_best(np.stack(finished), tables, predictor, budgets)], evaluated


def search(tables: CostTables, predictor: AccuracyPredictor, budgets: Mapping[str, float],
           check: bool = True, shgo_points: int = 16, starts_kept: int = 8, max_dims: int = 6) -> SearchResult:
    """Best predicted configuration under ``budgets`` by FLASH's hierarchical SHGO.

    For each earliest trained layer e (depth first), ``scipy.optimize.shgo`` maximizes the relaxed
    predicted accuracy of the layers from e on (each a level in [0, n_choices - 1], choices ordered by
    cost, costs and scores linear between levels, layer e kept trained) under the relaxed budgets
    (SLSQP as local minimizer); the relaxed optimum's neighbouring integer configurations are checked
    with the exact tables, and the best few are polished by moves of up to three layers until none helps.

    Args:
        tables: exact costs (with ``latency_ms`` for a latency budget).
        predictor: the accuracy predictor.
        budgets: metric -> upper bound (metrics of ``tables.metrics``).
        check: also enumerate the whole space (up to :data:`EXHAUSTIVE_LIMIT` configurations) and record
            its optimum (``result.exhaustive``); should it predict better than what SHGO found, it is
            returned instead (``exhaustive["shgo_label"]``).
        shgo_points: SHGO's sampling points per depth (at least 4 per relaxed variable).
        starts_kept: how many of the best rounded candidates are polished.
        max_dims: SHGO's variables per depth at most (later layers share one in consecutive groups).

    Raises:
        NoConfigurationFits (a ValueError) when no configuration fits.
    """
    from scipy.optimize import shgo

    budgets = _check_budgets(tables, budgets)
    full_predictor, predictor = predictor, predictor.at(tables.alpha)
    space = tables.space
    k, n = len(space.layers), space.n_choices
    levels = _levels(tables)
    start = time.perf_counter()
    candidates = [np.zeros((1, k), dtype=np.int64)]  # nothing trained but the classifier
    for e in range(k):
        d = k - e
        # per tail layer and level: exact costs given e, and the predictor's features
        own = {m: np.stack([tables.own[m][i, levels[i], e] for i in range(e, k)]) for m in budgets}
        fid = np.stack([predictor.fidelity[i, levels[i]] for i in range(e, k)])
        trained = np.stack([(levels[i] != FROZEN).astype(float) for i in range(e, k)])
        rest = {m: tables.rest[m][e] + sum(tables.own[m][i, FROZEN, e] for i in range(e)) for m in budgets}
        coef = predictor.coef if predictor.coef is not None else np.array([0.0, 1.0, 0.0])

        def interp(table: np.ndarray, z: np.ndarray) -> float:
            lo = np.clip(np.floor(z).astype(int), 0, n - 2)
            frac = z - lo
            rows = np.arange(len(z))
            return float(((1 - frac) * table[rows, lo] + frac * table[rows, lo + 1]).sum())

        # FLASH's hierarchy inside a depth too: layer e alone, the later layers tied in at most
        # max_dims - 1 consecutive groups (one relaxed variable each); the polish below refines per layer
        tied = np.array_split(np.arange(1, d), max(1, min(d - 1, max_dims - 1)))
        groups = [np.array([0])] + [g for g in tied if len(g)]
        of_layer = np.concatenate([np.full(len(g), j) for j, g in enumerate(groups)])

        def objective(zg: np.ndarray) -> float:
            z = zg[of_layer]
            return -(coef[1] * interp(fid, z) + coef[2] * interp(trained, z))

        constraints = [{"type": "ineq", "fun": (lambda zg, m=m: (budgets[m] - rest[m] - interp(own[m], zg[of_layer]))
                                                / max(budgets[m], 1e-12))} for m in budgets]
        bounds = [(1.0, n - 1.0)] + [(0.0, n - 1.0)] * (len(groups) - 1)
        if any(rest[m] + own[m][0, 1] + sum(own[m][j, 0] for j in range(1, d)) > budgets[m] for m in budgets):
            continue  # even the cheapest configuration of this depth does not fit
        try:
            found = shgo(objective, bounds, constraints=constraints, n=max(shgo_points, 4 * len(groups)), iters=1,
                         sampling_method="sobol", minimizer_kwargs={"method": "SLSQP"})
            local = getattr(found, "xl", None)  # the local minima SHGO found, best first
            points = [x for x in [found.x, *(list(local[:4]) if local is not None else [])] if x is not None]
        except (ValueError, np.linalg.LinAlgError, RuntimeError):  # e.g. Qhull on degenerate samples
            points = []
        if not points:  # no relaxed point found: start from the cheapest configuration of this depth
            points = [np.array([1.0] + [0.0] * (len(groups) - 1))]
        for zg in points:
            choices = [sorted({int(np.floor(v)), int(np.ceil(v))} | {min(n - 1, int(np.ceil(v)) + 1),
                                                                    max(0, int(np.floor(v)) - 1)})
                       for v in np.clip(zg, 0, n - 1)]
            choices[0] = [c for c in choices[0] if c >= 1] or [1]
            tail = np.array(list(itertools.product(*choices)), dtype=np.int64)[:, of_layer]
            configs = np.zeros((len(tail), k), dtype=np.int64)
            configs[:, e:] = levels[np.arange(e, k)[None, :], tail]
            candidates.append(configs)
    pool = np.unique(np.concatenate(candidates), axis=0)
    evaluated = len(pool)
    pool = pool[tables.fits(tables.evaluate(pool), budgets)]
    if not len(pool):
        raise NoConfigurationFits(f"no configuration fits the budgets {budgets}")
    starts = pool[np.argsort(-predictor.predict(pool), kind="stable")[:starts_kept]]
    best, polished = _polish(starts, tables, predictor, budgets)
    evaluated += polished
    result = _result(best, tables, predictor, time.perf_counter() - start, evaluated)
    if check and space.size <= EXHAUSTIVE_LIMIT:
        full = exhaustive(tables, full_predictor, budgets)
        return _checked(result, full, full.seconds, full.evaluated)
    return result


def _checked(found: SearchResult, full: SearchResult, seconds: float, count: int) -> SearchResult:
    """``found`` with the exhaustive check recorded, or the exhaustive optimum when it predicts better
    (then ``exhaustive["shgo_label"]`` names what SHGO had found)."""
    check = {"label": full.label, "predicted": full.predicted, "seconds": seconds, "configurations": count}
    if _beats(full.predicted, found.predicted):
        full.seconds, full.evaluated = found.seconds, found.evaluated
        full.exhaustive = check | {"shgo_label": found.label, "shgo_predicted": found.predicted}
        return full
    found.exhaustive = check
    return found


def search_knob(tables_by_alpha: Mapping[float, CostTables], predictor: AccuracyPredictor,
                budgets: Mapping[str, float], check: bool = True, shgo_points: int = 16) -> SearchResult:
    """:func:`search` with error-map pruning's kept share alpha as one more variable.

    Alpha's costs change in steps (ceil(alpha * C_out) channels per layer), so it is searched on the
    values of ``tables_by_alpha``, each in turn like the depth, with :func:`search` inside; at equal
    predicted accuracy the larger alpha (less pruning) wins.

    Args:
        tables_by_alpha: alpha -> :func:`cost_tables` at that alpha (1.0: no pruning).
        predictor: with ``by_alpha`` fidelities for every alpha < 1 of the tables.
        budgets, check, shgo_points: as for :func:`search` (the check enumerates every alpha).
    """
    start = time.perf_counter()
    alphas = sorted(tables_by_alpha, reverse=True)
    found, evaluated = None, 0
    for alpha in alphas:
        _check_budgets(tables_by_alpha[alpha], budgets)
        predictor.at(alpha)  # fails early on a missing fidelity
        try:
            result = search(tables_by_alpha[alpha], predictor, budgets, check=False, shgo_points=shgo_points)
        except NoConfigurationFits:
            continue
        evaluated += result.evaluated
        if found is None or _beats(result.predicted, found.predicted):
            found = result
    if found is None:
        raise NoConfigurationFits(f"no configuration fits the budgets {dict(budgets)} at any alpha {alphas[::-1]}")
    found.seconds, found.evaluated = time.perf_counter() - start, evaluated
    if not check or tables_by_alpha[alphas[0]].space.size > EXHAUSTIVE_LIMIT:
        return found
    full, seconds, count = None, 0.0, 0
    for alpha in alphas:
        try:
            best = exhaustive(tables_by_alpha[alpha], predictor, budgets)
        except NoConfigurationFits:
            continue
        seconds, count = seconds + best.seconds, count + best.evaluated
        if full is None or _beats(best.predicted, full.predicted):
            full = best
    return _checked(found, full, seconds, count)


def pareto_front(tables: CostTables, predictor: AccuracyPredictor, metric: str = "activation_bytes"
                 ) -> list[tuple[float, float, str]]:
    """(cost, predicted accuracy, label) of the configurations no other beats on both, by increasing cost
    (by enumeration: spaces up to :data:`EXHAUSTIVE_LIMIT` configurations)."""
    if tables.space.size > EXHAUSTIVE_LIMIT:
        raise ValueError(f"the Pareto front enumerates the space: {tables.space.size:,} configurations is more "
                         f"than {EXHAUSTIVE_LIMIT:,}")
    predictor = predictor.at(tables.alpha)
    configs = tables.space.all_configs()
    cost = tables.evaluate(configs)[metric]
    pred = predictor.predict(configs)
    order = np.lexsort((-pred, cost))
    front, best = [], -np.inf
    for j in order:
        if pred[j] > best + 1e-12:
            best = pred[j]
            front.append((float(cost[j]), float(pred[j]), tables.space.label(configs[j], tables.alpha)))
    return front


# --- configurations as method configs -------------------------------------------------------------
def method_config(space: SearchSpace, config: Sequence[int], alpha: float = 1.0) -> dict:
    """The ``model.method`` config (``{class_path, init_args}``) that trains ``config``.

    A trained tail with one choice throughout is the paper's "#Layers + patch size"
    (``Vanilla(layers=N)`` / ``GradientFilter(layers=N, patch_size=r)``, the run tags vanilla-NL /
    RX-NL); anything else is an explicit freeze list with per-layer filters. With ``alpha`` < 1 the
    method is :class:`~gradfilt.methods.ErrorMapPruning` at that alpha, in the same two forms.
    """
    space.check(config)
    config = [int(c) for c in config]
    trained = [name for name, c in zip(space.layers, config) if c != FROZEN]
    depth = len(trained)
    tail = config[len(config) - depth:]
    emp = {"alpha": float(alpha)} if alpha < 1 and depth else {}
    plain, filtering = ("ErrorMapPruning", "ErrorMapPruning") if emp else ("Vanilla", "GradientFilter")
    if depth and all(c == tail[0] != FROZEN for c in tail):  # the trained layers are the tail, one choice
        r = space.patch_size(tail[0])
        if r is None:
            return {"class_path": plain, "init_args": {"layers": depth, **emp}}
        return {"class_path": filtering, "init_args": {"layers": depth, **emp, "patch_size": r}}
    if depth == 0:
        return {"class_path": "Vanilla", "init_args": {"layers": 0}}
    freeze = ["", *(f"~{name}" for name in trained), f"~{space.classifier}"]
    filters = [{"path": name, "patch_size": space.patch_size(c), "type": "conv"}
               for name, c in zip(space.layers, config) if c >= 2]
    if not filters:
        return {"class_path": plain, "init_args": {"freeze": freeze, **emp}}
    return {"class_path": filtering, "init_args": {"freeze": freeze, **emp, "filter_install": filters}}


def method_tag(space: SearchSpace, config: Sequence[int], alpha: float = 1.0) -> str:
    """The run tag the classification CLI gives :func:`method_config` of ``config`` (e.g. R2-2L)."""
    from .methods import build_method

    return build_method(method_config(space, config, alpha)).tag


def run_from_tag(space: SearchSpace, tag: str) -> Optional[tuple[tuple[int, ...], float]]:
    """(configuration, EMP alpha) of a run tag ``vanilla-NL`` / ``R<r>-NL`` / ``emp<alpha>-NL[-R<r>]``
    or a label (with or without ``-a<alpha>``); None if it is none of them."""
    k = len(space.layers)
    match = re.fullmatch(r"(?:(vanilla)|R(\d+)|emp([0-9.]+))-(\d+)L(?:-R(\d+))?", tag)
    if match and (match.group(3) or not match.group(5)):
        r = match.group(2) or match.group(5)
        depth, alpha = int(match.group(4)), float(match.group(3) or 1.0)
        if r is not None and int(r) not in space.patch_sizes or depth > k or not 0 < alpha <= 1:
            return None
        choice = VANILLA if r is None else 2 + space.patch_sizes.index(int(r))
        return (FROZEN,) * (k - depth) + (choice,) * depth, alpha
    try:
        return space.parse_run(tag)
    except ValueError:
        return None


def config_from_tag(space: SearchSpace, tag: str) -> Optional[tuple[int, ...]]:
    """The configuration of a run tag ``vanilla-NL`` / ``R<r>-NL`` or a label, trained without EMP;
    None otherwise."""
    run = run_from_tag(space, tag)
    return run[0] if run is not None and run[1] == 1 else None


def sample_configs(space: SearchSpace, count: int, seed: int = 0, frozen_share: float = 0.15
                   ) -> list[tuple[int, ...]]:
    """``count`` distinct configurations spread over depths: depth d cycles through 1..K, the earliest
    trained layer is layer K - d, and each later layer is frozen with probability ``frozen_share``,
    else a uniformly drawn trained choice."""
    k, n = len(space.layers), space.n_choices
    if count < 1 or count > space.size - 1:
        raise ValueError(f"count must be in [1, {space.size - 1}], got {count}")
    rng = np.random.default_rng(seed)
    out: list[tuple[int, ...]] = []
    attempts = 0
    while len(out) < count:
        if attempts > 100 * count:
            raise ValueError(f"could not draw {count} distinct configurations; ask for fewer")
        depth = 1 + attempts % k
        attempts += 1
        config = [FROZEN] * (k - depth) + [int(rng.integers(1, n))]
        config += [FROZEN if rng.random() < frozen_share else int(rng.integers(1, n)) for _ in range(depth - 1)]
        if tuple(config) not in out:
            out.append(tuple(config))
    return out


def budget_text(metric: str, value: float) -> str:
    """A budget value with its unit, as :func:`parse_budget` reads it."""
    if metric == "activation_bytes":
        return f"memory={value / 1024:g}KB"
    if metric == "backward_flops":
        return f"flops={value / 1e6:g}M"
    return f"latency={value:g}"

