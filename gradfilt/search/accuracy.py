"""The accuracy side of the search: gradient fidelity (the training-free proxy) and the predictor that scores
configurations from it, optionally fitted on a few measured fine-tunes."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..ops.filtered import filtered_conv2d
from ..ops.pruned import channel_scores, kept_channels
from .space import FROZEN, SearchSpace, VANILLA

__all__ = ["gradient_fidelity", "gradient_fidelities", "spearman", "AccuracyPredictor"]


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
