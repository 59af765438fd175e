"""Choose what trains: freezing by dotted path, and the paper's "last N conv layers".

``freeze(model, ["backbone", "~backbone.layer4"])`` freezes the backbone except layer4; a
leading ``~`` un-freezes. BatchNorm layers left frozen stay in eval mode (their running
statistics do not move) even after ``model.train()``. ``last_convs`` finds the last N convs
in forward execution order by tracing one forward pass, which is what "#Layers = N" means
in the paper (module registration order can differ, e.g. a downsample registered last).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .paths import resolve
from .trace import LayerCall, trace_layers

__all__ = ["freeze", "check_freeze", "requires_grad_after", "keep_bn_eval", "bn_runs_eval", "last_convs",
           "classifier_name", "classifier_of"]

_EVAL_HOOK = "_gradfilt_keep_eval"


def _keep_eval(module: nn.Module, args) -> None:
    module.training = False


def _set_bn_frozen(bn: nn.Module, frozen: bool) -> None:
    handle = getattr(bn, _EVAL_HOOK, None)
    if frozen and handle is None:
        setattr(bn, _EVAL_HOOK, bn.register_forward_pre_hook(_keep_eval))
        bn.eval()
    elif not frozen and handle is not None:
        handle.remove()
        delattr(bn, _EVAL_HOOK)


def check_freeze(model: nn.Module, paths: Iterable[str]) -> list[tuple[str, object, bool]]:
    """Resolve a freeze list without changing anything: (path, module or Parameter, un-freeze) per entry.

    Args:
        model: the model the paths refer to.
        paths: dotted module or parameter paths ("" is the whole model); a leading ``~`` un-freezes.

    Raises:
        TypeError for a non-string entry, KeyError naming the valid children for an unknown path.
    """
    if isinstance(paths, str):
        raise TypeError(f"freeze paths must be a list of strings, got the string {paths!r}")
    ops = []
    for raw in paths:
        if not isinstance(raw, str):
            raise TypeError(f"freeze paths must be strings, got {raw!r}")
        unfreeze = raw.startswith("~")
        path = raw[1:] if unfreeze else raw
        try:
            target = resolve(model, path)
        except KeyError:
            target = _parameter(model, path)
        ops.append((path, target, unfreeze))
    return ops


def requires_grad_after(model: nn.Module, paths: Iterable[str]) -> dict[str, bool]:
    """What :func:`freeze` would leave in each parameter's ``requires_grad``, without changing anything.

    Args:
        model: the model the paths refer to.
        paths: as for :func:`freeze`.

    Returns:
        {parameter name: requires_grad} for every parameter of ``model``.
    """
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for _, target, unfreeze in check_freeze(model, paths):
        for p in (target.parameters() if isinstance(target, nn.Module) else [target]):
            flags[id(p)] = unfreeze
    return {name: flags[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}


def freeze(model: nn.Module, paths: Iterable[str], update_frozen_bn_stats: bool = False) -> None:
    """Set ``requires_grad`` by dotted path, in order; ``~path`` un-freezes.

    Args:
        model: the model to modify in place.
        paths: dotted module or parameter paths ("" is the whole model), applied in order.
        update_frozen_bn_stats: let frozen BatchNorm layers keep updating their running
            statistics in train mode (the paper's segmentation "calibration" stage).

    BatchNorm modules whose final state is frozen are put in eval mode and kept there by a
    forward pre-hook (so ``model.train()`` cannot re-enable their statistics), unless
    ``update_frozen_bn_stats``; un-freezing removes the hook. Unknown paths raise KeyError
    before anything changes.
    """
    bn_state: dict[nn.Module, bool] = {}
    for path, target, unfreeze in check_freeze(model, paths):
        target.requires_grad_(unfreeze)
        if isinstance(target, nn.Parameter):
            continue
        for module in target.modules():
            if isinstance(module, _BatchNorm):
                bn_state[module] = not unfreeze
    for bn, frozen in bn_state.items():
        _set_bn_frozen(bn, frozen and not update_frozen_bn_stats)


def keep_bn_eval(model: nn.Module) -> None:
    """Keep every BatchNorm of ``model`` in eval mode (running statistics fixed), trainable or not,
    even after ``model.train()``.

    Args:
        model: the model to modify in place.
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            _set_bn_frozen(module, True)


def bn_runs_eval(bn: nn.Module) -> bool:
    """Whether the BatchNorm ``bn`` normalizes with its running statistics on its next call: it is in eval
    mode, or frozen by :func:`freeze` / :func:`keep_bn_eval` (which put it back in eval mode when called).

    Args:
        bn: a BatchNorm module.
    """
    return not bn.training or hasattr(bn, _EVAL_HOOK)


def _parameter(model: nn.Module, path: str) -> nn.Parameter:
    module_path, _, name = path.rpartition(".")
    module = resolve(model, module_path)  # raises the helpful KeyError for a bad module part
    params = dict(module.named_parameters(recurse=False))
    if name not in params:
        children = ", ".join(n for n, _ in module.named_children())
        raise KeyError(
            f"no submodule or parameter {path!r}: {module_path or 'the root'!r} has children [{children}] "
            f"and parameters [{', '.join(params)}]"
        )
    return params[name]


def last_convs(
    model: nn.Module,
    n: int,
    example_input: Optional[Tensor] = None,
    input_size: Sequence[int] = (1, 3, 224, 224),
    main_path: bool = False,
) -> list[str]:
    """Dotted names of the last ``n`` Conv2d layers in forward execution order.

    Args:
        model: the model; it is run once without gradients, with its train/eval flags restored after.
        n: how many convs (the paper's "#Layers"); 0 gives [].
        example_input: a batch to trace with; if None, zeros of ``input_size``.
        input_size: shape of the zeros batch used when ``example_input`` is None.
        main_path: skip shortcut convs (those reading a tensor an earlier conv already read, like a
            ResNet downsample). The paper's #Layers counts this way: its ResNet cost cells for 3 and 4
            layers are layer4.0.conv2 and layer4.0.conv1, not layer4.0.downsample.0.

    Raises:
        ValueError if ``n`` is negative or larger than the number of convs the forward pass runs.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    order = [
        call.name for call in trace_layers(model, example_input, input_size)
        if isinstance(call.module, nn.Conv2d) and not (main_path and call.shortcut)
    ]
    if n > len(order):
        kind = "main-path conv layers" if main_path else "conv layers"
        raise ValueError(f"asked for the last {n} {kind} but the forward pass runs only {len(order)}")
    return order[len(order) - n:]


def classifier_name(model: nn.Module, example_input: Optional[Tensor] = None,
                    input_size: Sequence[int] = (1, 3, 224, 224), conv_fallback: bool = False) -> str:
    """Dotted name of the last ``nn.Linear`` the forward pass runs (the classifier of "#Layers").

    Args:
        model: the network (run once, flags restored).
        example_input: a batch to trace with; if None, zeros of ``input_size``.
        input_size: shape of the zeros batch.
        conv_fallback: a network that runs no ``nn.Linear`` (a segmentor) gives its last conv
            instead (the decode head's 1x1 classifier conv).
    """
    return classifier_of(trace_layers(model, example_input, input_size), conv_fallback, type(model).__name__)


def classifier_of(calls: Sequence[LayerCall], conv_fallback: bool = False, model_name: str = "the model") -> str:
    """:func:`classifier_name` from the calls of a trace already made (:func:`gradfilt.surgery.trace_layers`)."""
    linears = [c.name for c in calls if isinstance(c.module, nn.Linear)]
    if not linears and conv_fallback:
        linears = [c.name for c in calls if isinstance(c.module, nn.Conv2d)]
    if not linears:
        raise ValueError(f"{model_name} runs no nn.Linear classifier")
    return linears[-1]
