"""Model introspection and edits, all by dotted module path: resolve and swap modules (:mod:`.paths`),
trace the conv / linear calls of a forward (:mod:`.trace`), freeze and select layers (:mod:`.freeze`:
``freeze``, ``last_convs``, ``classifier_name``), fold BatchNorm into convs (:mod:`.fuse`: ``fuse_bn``),
install filtered convs (:mod:`.install`), the layer program of each known block (:mod:`.blocks`) and
frozen convs that keep nothing (:mod:`.lean`)."""

from .blocks import BLOCKS, block_convs, block_program, register_block
from .freeze import classifier_name, freeze, keep_bn_eval, last_convs
from .fuse import fuse_bn
from .install import FILTER_TYPES, FilterSpec, install_filters, register_filter_type
from .lean import lean_frozen_convs
from .paths import join_path, replace_module, resolve
from .trace import LayerCall, trace_layers

__all__ = ["BLOCKS", "block_convs", "block_program", "register_block", "classifier_name", "freeze", "keep_bn_eval",
           "last_convs", "fuse_bn", "FILTER_TYPES", "FilterSpec", "install_filters", "register_filter_type",
           "lean_frozen_convs", "join_path", "replace_module", "resolve", "LayerCall", "trace_layers"]
