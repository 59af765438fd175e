"""``MethodRunner``: mmengine's Runner with a gradfilt training method applied to the model it builds.

A config names the method at top level, with the same Method classes classification uses::

    runner_type = 'MethodRunner'
    method = dict(type='gradient_filter')          # or 'vanilla', or any registered method
    layer_list = dict(freeze=[...], filter_install=[...])
    fuse_bn = True                                 # fold BatchNorm first (sparse update, TinyTL)

``layer_list`` is a model's choice of layers, written once and shared by its vanilla and
filtered configs: each method takes the keys its signature names (``vanilla`` takes
``freeze``; ``gradient_filter`` also takes ``filter_install``); keys given in ``method`` win.
Without ``method`` every parameter trains.

The method is applied in :meth:`MethodRunner.build_model`, right after the segmentor is built and
initialized (its modules' own ``init_weights``, which ``train()`` then does not run again) and
before anything else sees it: before the model is wrapped for distributed training (so
DistributedDataParallel registers exactly the trainable parameters), before checkpoint loading
(``load_from`` fills the same Parameter objects), and before the optimizer is built. Every check
runs before the first change. The method's ``before_backward`` / ``after_backward`` hooks run
around each backward (through the optimizer wrapper); methods that select samples, move their
trained parameters every step or calibrate on training batches are refused.

Checkpoints survive a kill: each is written as ``<name>.part`` and renamed when complete, so a
work dir only ever holds complete checkpoints. When the next run of a work dir starts,
:func:`repair_work_dir` removes the parts a killed run left and, should the kill have torn
mmengine's ``last_checkpoint`` pointer, points it at the newest complete checkpoint again.

On a machine without CUDA, ``--launcher pytorch`` (torchrun) trains with the gloo backend on
CPU processes; see :mod:`segmentation.train`.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch
from mmengine.dist import broadcast, is_main_process
from mmengine.runner import Runner
from mmseg.registry import RUNNERS
from torch import nn

from gradfilt.surgery.fuse import fuse_bn
from gradfilt.methods import Method, build_method, method_class

__all__ = ["MethodRunner", "LAYER_LIST_KEYS", "configured_method", "apply_method", "example_input",
           "fuse_bn_for_config", "repair_work_dir"]

LAYER_LIST_KEYS = ("layers", "freeze", "filter_install")


def _plain(value: Any) -> Any:
    """An mmengine ConfigDict as a plain dict (nested ones too)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def configured_method(cfg) -> Optional[Method]:
    """The Method a config describes (``method`` + the keys of ``layer_list`` it takes), or None.

    Args:
        cfg: an mmengine Config.

    Raises:
        ValueError naming the valid keys for an unknown ``layer_list`` key, the valid methods for an
        unknown type, and the method's own errors for a bad argument.
    """
    spec = cfg.get("method")
    layer_list = _plain(cfg.get("layer_list") or {})
    if spec is None:
        if layer_list:
            raise ValueError("the config has a layer_list but no method; add e.g. method = dict(type='vanilla')")
        return None
    spec = _plain(spec)
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"method must be a dict with a 'type' (e.g. dict(type='gradient_filter')), got {spec!r}")
    unknown = sorted(set(layer_list) - set(LAYER_LIST_KEYS))
    if unknown:
        raise ValueError(f"unknown layer_list key(s) {unknown}; valid keys: {list(LAYER_LIST_KEYS)}")
    accepted = inspect.signature(method_class(spec["type"])).parameters
    taken = {k: v for k, v in layer_list.items() if k in accepted and k not in spec}
    method = build_method({**taken, **spec})
    unsupported = [what for what, missing in (
        ("per-sample selection (select_samples)", type(method).select_samples is not Method.select_samples),
        ("per-step parameter moves (start_step)", type(method).start_step is not Method.start_step),
        ("calibration on training batches", method.calibration_batches > 0)) if missing]
    if unsupported:
        raise ValueError(f"method {method.tag}: {', '.join(unsupported)} is not supported by the segmentation "
                         f"runner")
    return method


def example_input(cfg) -> torch.Tensor:
    """A zeros batch of one image at the config's crop size (for tracing the segmentor)."""
    size = cfg.get("crop_size") or cfg.model.get("data_preprocessor", {}).get("size") or (512, 512)
    return torch.zeros(1, 3, *size)


def apply_method(model: nn.Module, cfg) -> Optional[Method]:
    """Apply the config's method to a freshly built segmentor (unwrapped) in place; returns it.

    Args:
        model: the segmentor mmseg built from ``cfg.model``.
        cfg: the run's config.
    """
    method = configured_method(cfg)
    if method is not None:
        method.apply(model, example_input(cfg))
    return method


def fuse_bn_for_config(model: nn.Module, cfg) -> int:
    """Fold the segmentor's BatchNorms into their convs (:func:`gradfilt.surgery.fuse_bn`, which traces and checks in
    eval mode and restores every module's flag, on a random batch of two images at the config's crop size);
    returns how many were folded."""
    batch = torch.randn(2, *example_input(cfg).shape[1:], generator=torch.Generator().manual_seed(0))
    return len(fuse_bn(model, batch))


def _checkpoint_order(path: Path) -> tuple[int, float]:
    number = re.search(r"(\d+)", path.stem)
    return (int(number.group(1)) if number else -1, path.stat().st_mtime)


def repair_work_dir(work_dir: str) -> list[str]:
    """Remove the ``*.part`` files a killed run left in a work dir and mend a torn ``last_checkpoint``.

    ``last_checkpoint`` is kept if it names an existing file; otherwise it is rewritten to name the
    newest ``iter_N.pth`` / ``epoch_N.pth`` (or removed when there is none).

    Returns:
        what was changed, one line each.
    """
    folder, changed = Path(work_dir), []
    if not folder.is_dir():
        return changed
    for part in folder.glob("*.part"):
        part.unlink(missing_ok=True)
        changed.append(f"removed {part}")
    pointer = folder / "last_checkpoint"
    if pointer.is_file():
        named = pointer.read_text().strip()
        if not named or not Path(named).is_file():
            found = sorted((*folder.glob("iter_*.pth"), *folder.glob("epoch_*.pth")), key=_checkpoint_order)
            if found:
                pointer.write_text(str(found[-1]))
                changed.append(f"{pointer} named {named!r}; now {found[-1]}")
            else:
                pointer.unlink()
                changed.append(f"removed {pointer} (it named {named!r}; no checkpoint is left)")
    return changed


@RUNNERS.register_module()
class MethodRunner(Runner):
    """mmengine Runner that applies ``cfg.method`` to the model as soon as it is built.

    Takes the Runner's arguments; the method comes from the config (``method``, ``layer_list``).
    Attributes:
        method: the applied Method, or None.
    """

    method: Optional[Method] = None

    def build_model(self, model):
        model = super().build_model(model)
        if self.cfg.get("fuse_bn") or self.cfg.get("method") is not None:
            # initialized now, before BatchNorm is folded or the method swaps modules (filters, patch-grid blocks
            # that stand in for mmcv's ConvModules, whose init_weights initializes their convs); train() must not
            # initialize the changed model again
            if hasattr(model, "init_weights"):
                model.init_weights()
            self._weights_ready = True
        if self.cfg.get("fuse_bn"):
            self._fuse_bn(model)
        self.method = apply_method(model, self.cfg)
        if self.method is not None:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            self.logger.info(f"method {self.method.tag}: {trainable:,} trainable parameters")
            summary = self.method.summary()
            if summary:
                self.logger.info(f"method {self.method.tag}:\n{summary}")
        return model

    _weights_ready = False

    def _init_model_weights(self) -> None:
        if not self._weights_ready:
            return super()._init_model_weights()
        model = self.model.module if hasattr(self.model, "module") else self.model
        for value in model.state_dict().values():  # the ranks agree, as after mmengine's own initialization
            broadcast(value)

    def _fuse_bn(self, model) -> None:
        """``fuse_bn = True``: fold BatchNorm into the convs (sparse update and TinyTL train the folded
        biases). The statistics must be those of the weights the run starts from, so ``load_from`` is
        loaded here (after the initialization in ``build_model``), before folding, and not again in
        ``train()``; a resumed run's checkpoints are already folded and load as usual."""
        if self._load_from is not None and not self._resume:
            from mmengine.runner import load_checkpoint

            load_checkpoint(model, self._load_from, map_location="cpu", logger=self.logger)
            self.logger.info(f"loaded {self._load_from} before folding BatchNorm into the convs")
            self._load_from = None
        self.logger.info(f"folded {fuse_bn_for_config(model, self.cfg)} BatchNorm layers into their convs")

    def train(self):
        if is_main_process():
            for line in repair_work_dir(self.work_dir):
                self.logger.warning(f"left by an interrupted run: {line}")
        return super().train()

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        """mmengine's save, into ``<filename>.part`` renamed when complete (local folders)."""
        if "://" in str(out_dir):  # a remote backend: mmengine's own writing
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        part = f"{filename}.part"
        super().save_checkpoint(out_dir, part, *args, **kwargs)
        if is_main_process():
            os.replace(os.path.join(out_dir, part), os.path.join(out_dir, filename))

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and model_wrapper_cfg is None and not torch.cuda.is_available():
            model_wrapper_cfg = dict(  # CPU processes: DDP takes no device_ids
                type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                find_unused_parameters=self.cfg.get("find_unused_parameters", False))
        return super().wrap_model(model_wrapper_cfg, model)

    def build_optim_wrapper(self, optim_wrapper):
        wrapper = super().build_optim_wrapper(optim_wrapper)
        method = self.method
        if method is not None and (type(method).before_backward is not Method.before_backward
                                   or type(method).after_backward is not Method.after_backward):
            backward = wrapper.backward
            net = self.model.module if hasattr(self.model, "module") else self.model

            @functools.wraps(backward)
            def backward_with_hooks(loss, **kwargs):
                method.before_backward(net, loss, self.iter)
                backward(loss, **kwargs)
                method.after_backward(net, self.iter)

            wrapper.backward = backward_with_hooks
        return wrapper
