"""On-device training methods behind one interface (:class:`Method`), found by name in :data:`METHODS`.

Built in: ``vanilla`` (:class:`Vanilla`, exact BP on the chosen layers), ``gradient_filter``
(:class:`GradientFilter`, the paper's method), ``sparse_update`` (:class:`SparseUpdate`,
tiny-training's bias + partial-channel weight updates), ``tinytl`` (:class:`TinyTL`, biases +
lite residuals) and ``dynamic_sparse`` (:class:`DynamicSparseUpdate`, channels that move every step
within a memory budget) and ``emp`` (:class:`ErrorMapPruning`, the error map's top channels per
step, optionally filtered), ``eif`` (:class:`EarlyInstanceFilter`, a filter network that drops
predicted low-loss instances before any other method trains on the rest). Add one with :func:`register_method`
in a module of its own (``docs/adding_a_method.md``); :func:`build_method` turns a config (``{type: name, ...}`` or
``{class_path: ..., init_args: ...}``) into an instance.
"""

from .base import METHODS, Method, build_method, method_class, register_method
from .dynamic_sparse import DynamicSparseUpdate
from .eif import EarlyInstanceFilter
from .emp import ErrorMapPruning
from .gradient_filter import GradientFilter
from .sparse_update import SparseUpdate
from .tinytl import TinyTL
from .vanilla import Vanilla
from .estimate import estimate

__all__ = ["Method", "METHODS", "register_method", "method_class", "build_method", "Vanilla", "GradientFilter",
           "SparseUpdate", "TinyTL", "DynamicSparseUpdate", "ErrorMapPruning", "EarlyInstanceFilter", "estimate"]
