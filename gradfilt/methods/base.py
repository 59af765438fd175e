"""The ``Method`` type: one on-device training method, set up once on a model and consulted every step.

A method is a small object built from its configuration (its typed ``__init__`` is the schema,
so LightningCLI and mmengine configs can build it) that

* sets itself up on a model in place with :meth:`Method.apply`: swaps layers (keeping the
  original Parameter objects), freezes, adds modules. Every check runs before the first change,
  so a bad configuration leaves the model exactly as it was;
* may first look at a few labelled training batches, :meth:`calibrate`, before :meth:`apply`
  (a method that wants them says how many in :attr:`Method.calibration_batches`; the training
  loops supply them from the training set);
* takes part in every training iteration through hooks whose defaults do nothing:
  :meth:`start_step` (first, with the optimizer: a method may move which values train),
  :meth:`select_samples` (before the forward: which samples of the batch are trained on),
  :meth:`after_forward` (each kept sample's loss), :meth:`before_backward` (between forward and
  backward) and :meth:`after_backward`; each gets the optimizer step number;
* reports its cost with :meth:`cost` (backward FLOPs and activation memory in the paper's
  convention, trainable parameters; see :mod:`gradfilt.cost`), a short :attr:`tag` for run
  folders and the :meth:`fields` a report table shows.

Methods are found by name in :data:`METHODS`; add one with :func:`register_method`. The
training loops (classification, segmentation, the latency benchmark) only call this interface,
so a new method is one module plus one config file.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence, Union

from torch import Tensor, nn

from ..cost import estimate_configured
from ..registry import new_registry, registering

__all__ = ["Method", "METHODS", "register_method", "method_class", "build_method"]

METHODS: dict[str, type["Method"]] = new_registry("methods", "training methods (Method subclasses)")


def register_method(name: str) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator registering a :class:`Method` subclass under ``name``.

    Args:
        name: the short name configs use (``type: name`` or ``class_path: name``).
    """

    def decorate(cls: type["Method"]) -> type["Method"]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) decorates Method subclasses, not {cls!r}")
        if METHODS.get(name) is not cls:  # the same class again (a module imported twice) changes nothing
            registering(METHODS, "method", name)(cls)
        cls.name = name
        return cls

    return decorate


class Method:
    """Base class of every training method; subclasses override :meth:`apply` and, if they act
    during training, the per-iteration hooks.

    Attributes:
        name: the registry name (set by :func:`register_method`).
    """

    name: ClassVar[str] = ""
    calibration_batches: int = 0  # labelled training batches calibrate() wants before apply(); 0: none

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "apply" in cls.__dict__:  # every apply() refuses a model that already carries a method
            cls.apply = _one_method_per_model(cls.__dict__["apply"])

    def __new__(cls, *args: Any, **kwargs: Any) -> "Method":
        self = super().__new__(cls)
        try:  # remember the constructor arguments, so that config() can rebuild the method anywhere
            signature = inspect.signature(cls.__init__)
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            self._init_args = {k: v for k, v in list(bound.arguments.items())[1:]
                               if signature.parameters[k].kind not in variadic}
        except TypeError:
            self._init_args = {}  # __init__ will raise the real error
        return self

    def config(self) -> dict[str, Any]:
        """``{class_path, init_args}``: what :func:`build_method` (and LightningCLI) turns back into this method."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _plain(self._init_args)}

    # --- set-up -------------------------------------------------------------------------------
    def apply(self, model: nn.Module, example_input: Tensor) -> None:
        """Set the method up on ``model`` in place; validate everything before the first change.

        Args:
            model: the network, with its final weights loaded (BN folded if the run folds it).
            example_input: one batch of the run's input shape (used to trace the forward pass).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement apply()")

    def calibrate(self, model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> None:
        """Look at ``calibration_batches`` labelled training batches before :meth:`apply` (default: nothing).

        Args:
            model: the network as :meth:`apply` will get it (weights loaded, BN folded); not changed.
            batches: (inputs, class targets) pairs from the training set.
        """

    # --- per-iteration hooks (no-ops by default) ----------------------------------------------
    def start_step(self, model: nn.Module, optimizer, step: int) -> None:
        """Called first in every training iteration, before :meth:`select_samples` and the forward pass.

        Args:
            model: the network being trained.
            optimizer: the ``torch.optim.Optimizer`` training it (a method that moves values between
                Parameters also moves their per-element state).
            step: the optimizer step about to be taken (0-based; the same for every micro-batch of an
                accumulated step).
        """

    def select_samples(self, model: nn.Module, inputs: Tensor, targets: Tensor, step: int) -> Optional[Tensor]:
        """Which samples of a training batch the model is trained on, decided before its forward pass.

        Args:
            model: the network being trained.
            inputs, targets: the batch.
            step: the optimizer step about to be taken (0-based).

        Returns:
            None to train on every sample, else a boolean mask or an index tensor over the batch;
            the others skip the forward and backward.
        """
        return None

    def after_forward(self, model: nn.Module, sample_losses: Tensor, step: int) -> None:
        """Called after the forward pass with the loss of each kept sample, where the training loop has them
        (classification does; segmentation does not call it).

        Args:
            model: the network being trained.
            sample_losses: (kept samples,) detached losses.
            step: the optimizer step being taken.
        """

    def before_backward(self, model: nn.Module, loss: Tensor, step: int) -> None:
        """Called after the forward pass and the loss, before ``loss.backward()``.

        Args:
            model: the network being trained.
            loss: the (scalar) training loss of the kept samples.
            step: the optimizer step being taken.
        """

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Called after the backward pass, before the optimizer step (gradients are in ``.grad``).

        Args:
            model: the network being trained.
            step: the optimizer step being taken.
        """

    # --- description --------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Scalars the training loop logs every step as ``Method/<key>`` (default: none)."""
        return {}

    def summary(self) -> str:
        """What :meth:`apply` set up, for the run's log (default: nothing to add)."""
        return ""

    @property
    def tag(self) -> str:
        """Short run-folder name, e.g. ``vanilla-2L``, ``R2-4L``."""
        return self.name or type(self).__name__

    def fields(self) -> dict[str, Any]:
        """The columns a report table shows for this method: method, layers, patch_size."""
        return {"method": self.tag, "layers": "-", "patch_size": "-"}

    def cost(self, model: nn.Module, image_size: Union[int, Sequence[int]], batch_size: int = 1,
             in_channels: int = 3):
        """Backward FLOPs, activation memory and trainable parameters of ``model`` as this method set it up.

        The default reads the set-up from the model (which parameters train, which convs are
        filtered) with :func:`gradfilt.cost.estimate_configured`; a method whose savings the model
        does not show (e.g. one that drops samples or channels per step) overrides it.

        Args:
            model: the network after :meth:`apply`.
            image_size: S or (H, W).
            batch_size: images per step (the paper's columns use 1).
            in_channels: channels of the input image.

        Returns:
            A :class:`gradfilt.cost.CostReport`.
        """
        return estimate_configured(model, image_size, batch_size, in_channels)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "_init_args", {}).items())
        return f"{type(self).__name__}({args})"


APPLIED = "_gradfilt_method"  # attribute of a model a method has been applied to: that method's tag


def _one_method_per_model(apply: Callable) -> Callable:
    """``apply`` that first refuses a model another method (or this one) was already applied to, and marks
    the model once it succeeds. A wrapper that applies its inner method inside its own apply is checked
    before the inner one marks the model, and marks it last."""

    @functools.wraps(apply)
    def guarded(self: "Method", model: nn.Module, example_input: Tensor, *args: Any, **kwargs: Any) -> None:
        held = model.__dict__.get(APPLIED)
        if held is not None:
            raise ValueError(f"the model already carries a training method ({held}); {type(self).__name__} needs a "
                             f"model no method was applied to: build the network again (or load its weights into a "
                             f"new one) and apply one method")
        apply(self, model, example_input, *args, **kwargs)
        model.__dict__[APPLIED] = f"{type(self).__name__} {self.tag}"

    return guarded


def _plain(value: Any) -> Any:
    """Config values as plain Python: dataclasses such as FilterSpec become dicts, a wrapped method its own
    ``{class_path, init_args}`` config (a checkpoint's hyper-parameters must load weights-only)."""
    import dataclasses

    if isinstance(value, Method):
        return value.config()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def method_class(name: str) -> type[Method]:
    """The Method subclass named by a registry name, a class name or a dotted import path.

    Args:
        name: ``gradient_filter``, ``GradientFilter`` or ``gradfilt.methods.GradientFilter``.

    Raises:
        ValueError naming the registered methods when nothing matches.
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {name!r}")
    if name in METHODS:
        return METHODS[name]
    by_class = [cls for cls in METHODS.values() if cls.__name__ == name]
    if len(by_class) == 1:
        return by_class[0]
    module_name, _, attr = name.rpartition(".")
    if module_name:
        try:
            cls = getattr(importlib.import_module(module_name), attr, None)
        except ImportError:
            cls = None
        if isinstance(cls, type) and issubclass(cls, Method):
            return cls
    raise ValueError(f"unknown method {name!r}; valid methods: {sorted(METHODS)} "
                     f"(or their class names, or a dotted path to a Method subclass)")


def build_method(spec: Union[Method, str, Mapping[str, Any]]) -> Method:
    """A Method from a config: an instance, a name, ``{type: name, **args}`` or ``{class_path, init_args}``.

    Args:
        spec: the configuration. Unknown arguments are an error that lists the valid ones.
    """
    if isinstance(spec, Method):
        return spec
    if isinstance(spec, str):
        return method_class(spec)()
    if not isinstance(spec, Mapping):
        raise TypeError(f"a method config is a name or a mapping with 'type' or 'class_path', got {spec!r}")
    spec = dict(spec)
    if "class_path" in spec:
        extra = sorted(set(spec) - {"class_path", "init_args"})
        if extra:
            raise ValueError(f"method config {spec}: unexpected key(s) {extra} beside class_path / init_args")
        cls, kwargs = method_class(spec["class_path"]), dict(spec.get("init_args") or {})
    elif "type" in spec:
        cls, kwargs = method_class(spec.pop("type")), spec
    else:
        raise ValueError(f"method config {spec} names no method: give 'type' (one of {sorted(METHODS)}) "
                         f"or 'class_path'")
    try:
        return cls(**kwargs)
    except TypeError as err:
        valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        raise ValueError(f"method {cls.name or cls.__name__!r}: {err}; valid arguments: {valid}") from None
