"""The cost model: analytical backward FLOPs and activation memory in the paper's conventions
(:mod:`.counts`, ``docs/cost_model.md``), the bytes autograd really keeps (:mod:`.measure`) and their text
form (:mod:`.report`). It costs a model as it is set up and imports no training method: the paper's
"#Layers + patch size" convenience, which sets a model up first, is :func:`gradfilt.methods.estimate`.
"""

from .counts import (FLOAT_BYTES, CostReport, LayerCost, check_batch, conv_cost, emp_conv_cost, estimate_configured,
                     forward_cost, image_size_of, linear_cost, pruned_conv_cost, traced_calls, training_flops)
from .measure import measure
from .report import format_bytes, format_flops, print_report

__all__ = ["FLOAT_BYTES", "LayerCost", "CostReport", "training_flops", "conv_cost", "forward_cost", "pruned_conv_cost",
           "emp_conv_cost", "linear_cost", "image_size_of", "check_batch", "traced_calls", "estimate_configured",
           "measure", "format_flops", "format_bytes", "print_report"]
