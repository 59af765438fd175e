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

from .accuracy import AccuracyPredictor, gradient_fidelities, gradient_fidelity, spearman
from .latency_model import LatencyModel
from .solvers import NoConfigurationFits, SearchResult, exhaustive, pareto_front, parse_budget, search, search_knob
from .space import (BUDGETS, EXHAUSTIVE_LIMIT, FROZEN, RUN_TAG, VANILLA, SearchSpace, budget_text, config_from_tag,
                    earliest, method_config, method_tag, run_from_tag, sample_configs, search_space)
from .tables import CostTables, cost_tables

__all__ = ["SearchSpace", "search_space", "earliest", "CostTables", "cost_tables", "LatencyModel", "gradient_fidelity",
           "gradient_fidelities", "AccuracyPredictor", "SearchResult", "NoConfigurationFits", "search", "search_knob",
           "exhaustive", "pareto_front", "method_config", "method_tag", "run_from_tag", "config_from_tag",
           "sample_configs", "spearman", "parse_budget", "budget_text", "BUDGETS", "EXHAUSTIVE_LIMIT", "FROZEN",
           "VANILLA", "RUN_TAG"]
