"""The search space: which of the last K convs train and how, configurations and their labels and tags, and
configurations as the method configs the classification runs take."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from torch import Tensor, nn

from ..methods import build_method
from ..ops.geometry import check_patch_size
from ..surgery.freeze import classifier_of
from ..surgery.trace import trace_layers

__all__ = ["FROZEN", "VANILLA", "EXHAUSTIVE_LIMIT", "BUDGETS", "SYMBOLS", "RUN_TAG", "SearchSpace", "search_space",
           "earliest", "method_config", "method_tag", "run_from_tag", "config_from_tag", "sample_configs",
           "budget_text"]


FROZEN, VANILLA = 0, 1
EXHAUSTIVE_LIMIT = 10 ** 7  # search(check=True) enumerates spaces up to this many configurations
BUDGETS = {"memory": "activation_bytes", "flops": "backward_flops", "latency": "latency_ms"}  # budget name -> metric
SYMBOLS = {FROZEN: "_", VANILLA: "V"}
# a run tag: vanilla-NL / R<r>-NL / emp<alpha>-NL[-R<r>]; groups: vanilla, r, alpha, N, r after emp
RUN_TAG = re.compile(r"(?:(vanilla)|R(\d+)|emp([0-9.]+))-(\d+)L(?:-R(\d+))?")


@dataclass(frozen=True)
class SearchSpace:
    """The searched layers and the choices each has.

    Attributes:
        layers: dotted conv names, forward order (earliest first).
        patch_sizes: the filtered choices' r (choice index 2 + j is ``patch_sizes[j]``); r = 1 is the
            filtered op with 1x1 patches, whose gradient is the exact one on stride-1 convs (a check of
            the proxy; a strided conv's filter collapses its kernel even then, see gradfilt/ops/geometry.py).
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
        text = "".join(SYMBOLS.get(int(c), str(self.patch_size(int(c)))) for c in config)
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
    return build_method(method_config(space, config, alpha)).tag


def run_from_tag(space: SearchSpace, tag: str) -> Optional[tuple[tuple[int, ...], float]]:
    """(configuration, EMP alpha) of a run tag ``vanilla-NL`` / ``R<r>-NL`` / ``emp<alpha>-NL[-R<r>]``
    or a label (with or without ``-a<alpha>``); None if it is none of them."""
    k = len(space.layers)
    match = RUN_TAG.fullmatch(tag)
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
