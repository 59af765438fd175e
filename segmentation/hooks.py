"""mmengine hooks that set up gradient filtering from an mmseg config.

Load them with ``custom_imports = dict(imports=['segmentation.hooks'])`` and list them in
``custom_hooks``. Both act in ``before_run``: mmengine builds the optimizer before that, and
both keep the model's Parameter objects (``FilteredConv2d.from_conv`` shares them; freezing
only flips ``requires_grad``), so the optimizer built earlier trains exactly what is left
trainable. Paths use gradfilt's dotted syntax on the (unwrapped) segmentor, e.g.
``backbone.layer4.1`` or ``decode_head.aspp_modules.2``. ``apply(model)`` does a hook's
set-up on a model outside a run (the report's cost model, the config tests).
"""

from __future__ import annotations

from typing import Sequence

from mmengine.hooks import Hook
from torch.nn.modules.batchnorm import _BatchNorm
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from gradfilt import FilterSpec, freeze, install_filters

__all__ = ["GradientFilterHook", "FreezeLayersHook"]


def _unwrap(runner):
    model = runner.model
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class GradientFilterHook(Hook):
    """Replace the configured convs by ``FilteredConv2d`` before training starts.

    Args:
        filter_install: list of ``dict(path=..., patch_size=..., type=...)`` (gradfilt's
            ``FilterSpec``: type is a key of ``gradfilt.FILTER_TYPES``, default ``all``).
            Keys and types are checked when the hook is built; paths when the run starts,
            before the first iteration, with nothing replaced if any entry is wrong.
    """

    priority = "VERY_HIGH"

    def __init__(self, filter_install: Sequence[dict]) -> None:
        self.specs = [FilterSpec.parse(dict(spec)) for spec in filter_install]
        self.installed: list[str] = []

    def apply(self, model) -> list[str]:
        """Install the filters on ``model`` (an unwrapped segmentor); returns the replaced convs."""
        self.installed = install_filters(model, self.specs)
        return self.installed

    def before_run(self, runner) -> None:
        self.apply(_unwrap(runner))
        runner.logger.info(f"GradientFilterHook: filtered {len(self.installed)} convs: {self.installed}")


@HOOKS.register_module()
class FreezeLayersHook(Hook):
    """Freeze modules / parameters by dotted path before training starts; frozen BN stays in eval mode.

    Args:
        freeze: paths applied in order; ``""`` is the whole model, ``"~path"`` un-freezes.
        bn_eval: also keep every BatchNorm in eval mode (statistics frozen), trainable or not.
        update_bn_stats: frozen BatchNorm layers keep updating their running statistics
            (calibration: classifier + BN statistics); exclusive with bn_eval.
    """

    priority = "HIGH"

    def __init__(self, freeze: Sequence[str], bn_eval: bool = False, update_bn_stats: bool = False) -> None:
        if isinstance(freeze, str) or not all(isinstance(p, str) for p in freeze):
            raise TypeError(f"FreezeLayersHook.freeze must be a list of path strings, got {freeze!r}")
        if bn_eval and update_bn_stats:
            raise ValueError("FreezeLayersHook: bn_eval and update_bn_stats exclude each other")
        self.paths = list(freeze)
        self.bn_eval = bn_eval
        self.update_bn_stats = update_bn_stats

    def apply(self, model) -> None:
        """Apply the freeze list to ``model`` (an unwrapped segmentor)."""
        freeze(model, self.paths, update_frozen_bn_stats=self.update_bn_stats)

    def before_run(self, runner) -> None:
        model = _unwrap(runner)
        self.apply(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        runner.logger.info(f"FreezeLayersHook: {trainable:,} trainable parameters left")

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.bn_eval:  # the iteration loop calls model.train() before every iteration
            for m in _unwrap(runner).modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
