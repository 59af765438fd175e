"""Budgets and the solvers: FLASH's hierarchical SHGO search, exhaustive enumeration, the Pareto front."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from .accuracy import AccuracyPredictor
from .space import BUDGETS, EXHAUSTIVE_LIMIT, FROZEN
from .tables import CostTables

__all__ = ["parse_budget", "NoConfigurationFits", "SearchResult", "exhaustive", "search", "search_knob",
           "pareto_front"]


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


def beats(a: float, b: float) -> bool:
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


def _interp(table: np.ndarray, z: np.ndarray) -> float:
    """Sum over layers of ``table[layer, level]`` interpolated linearly at the relaxed levels ``z``."""
    lo = np.clip(np.floor(z).astype(int), 0, table.shape[1] - 2)
    frac = z - lo
    rows = np.arange(len(z))
    return float(((1 - frac) * table[rows, lo] + frac * table[rows, lo + 1]).sum())


def _depth_candidates(e: int, tables: CostTables, predictor: AccuracyPredictor, budgets: Mapping[str, float],
                      levels: np.ndarray, shgo_points: int, max_dims: int) -> Optional[np.ndarray]:
    """Integer configurations around SHGO's relaxed optima for earliest trained layer ``e`` (None when even
    the cheapest configuration of that depth does not fit)."""
    from scipy.optimize import shgo

    k, n = len(tables.space.layers), tables.space.n_choices
    d = k - e
    # per tail layer and level: exact costs given e, and the predictor's features
    own = {m: np.stack([tables.own[m][i, levels[i], e] for i in range(e, k)]) for m in budgets}
    fid = np.stack([predictor.fidelity[i, levels[i]] for i in range(e, k)])
    trained = np.stack([(levels[i] != FROZEN).astype(float) for i in range(e, k)])
    rest = {m: tables.rest[m][e] + sum(tables.own[m][i, FROZEN, e] for i in range(e)) for m in budgets}
    coef = predictor.coef if predictor.coef is not None else np.array([0.0, 1.0, 0.0])
    if any(rest[m] + own[m][0, 1] + sum(own[m][j, 0] for j in range(1, d)) > budgets[m] for m in budgets):
        return None
    # FLASH's hierarchy inside a depth too: layer e alone, the later layers tied in at most
    # max_dims - 1 consecutive groups (one relaxed variable each); the polish refines per layer
    tied = np.array_split(np.arange(1, d), max(1, min(d - 1, max_dims - 1)))
    groups = [np.array([0])] + [g for g in tied if len(g)]
    of_layer = np.concatenate([np.full(len(g), j) for j, g in enumerate(groups)])

    def objective(zg: np.ndarray) -> float:
        z = zg[of_layer]
        return -(coef[1] * _interp(fid, z) + coef[2] * _interp(trained, z))

    constraints = [{"type": "ineq", "fun": (lambda zg, m=m: (budgets[m] - rest[m] - _interp(own[m], zg[of_layer]))
                                            / max(budgets[m], 1e-12))} for m in budgets]
    bounds = [(1.0, n - 1.0)] + [(0.0, n - 1.0)] * (len(groups) - 1)
    try:
        found = shgo(objective, bounds, constraints=constraints, n=max(shgo_points, 4 * len(groups)), iters=1,
                     sampling_method="sobol", minimizer_kwargs={"method": "SLSQP"})
        local = getattr(found, "xl", None)  # the local minima SHGO found, best first
        points = [x for x in [found.x, *(list(local[:4]) if local is not None else [])] if x is not None]
    except (ValueError, np.linalg.LinAlgError, RuntimeError):  # e.g. Qhull on degenerate samples
        points = []
    if not points:  # no relaxed point found: start from the cheapest configuration of this depth
        points = [np.array([1.0] + [0.0] * (len(groups) - 1))]
    candidates = []
    for zg in points:
        choices = [sorted({int(np.floor(v)), int(np.ceil(v))} | {min(n - 1, int(np.ceil(v)) + 1),
                                                                max(0, int(np.floor(v)) - 1)})
                   for v in np.clip(zg, 0, n - 1)]
        choices[0] = [c for c in choices[0] if c >= 1] or [1]
        tail = np.array(list(itertools.product(*choices)), dtype=np.int64)[:, of_layer]
        configs = np.zeros((len(tail), k), dtype=np.int64)
        configs[:, e:] = levels[np.arange(e, k)[None, :], tail]
        candidates.append(configs)
    return np.concatenate(candidates)


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
    budgets = _check_budgets(tables, budgets)
    full_predictor, predictor = predictor, predictor.at(tables.alpha)
    space = tables.space
    k = len(space.layers)
    levels = _levels(tables)
    start = time.perf_counter()
    candidates = [np.zeros((1, k), dtype=np.int64)]  # nothing trained but the classifier
    for e in range(k):
        found = _depth_candidates(e, tables, predictor, budgets, levels, shgo_points, max_dims)
        if found is not None:
            candidates.append(found)
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
    if beats(full.predicted, found.predicted):
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
        if found is None or beats(result.predicted, found.predicted):
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
        if full is None or beats(best.predicted, full.predicted):
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
