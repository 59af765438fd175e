"""Run MMSegmentation 1.x on mmcv-lite: a stand-in for the compiled ``mmcv.ops``.

mmseg imports a few ``mmcv.ops`` symbols at import time, and PyPI's full mmcv (which has
them) does not compile against torch >= 2.10. :func:`install` registers a module
``mmcv.ops`` when the real one cannot be imported: ``point_sample`` is real (pure PyTorch,
``grid_sample``), every other name is a placeholder that raises :class:`MissingOpError`
naming the op when it is called or instantiated, never at import. With full mmcv installed
it leaves ``mmcv.ops`` alone.

Checkpoints load weights-only, whatever their scheme. mmengine's own checkpoints hold its
``HistoryBuffer`` (its statistics methods pickled as ``getattr(HistoryBuffer, name)``) and numpy arrays
and scalars, which torch's weights-only unpickler refuses by default, so :func:`install` replaces
mmengine's local-file loader by one that allows exactly those types (``MMENGINE_CHECKPOINT_GLOBALS``;
``getattr`` only as :func:`history_getattr`, which serves HistoryBuffer's statistics methods and
nothing else), and the download behind ``http(s)://``, ``open-mmlab://``, ``mmcls://`` and
``torchvision://`` by one that loads the downloaded file the same way (mmengine's own unpickles it
fully, running whatever code the file names).
"""

from __future__ import annotations

import importlib
import os.path as osp
import pickle
import sys
import types

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MissingOpError", "install", "point_sample", "STAND_IN_OPS", "MMENGINE_CHECKPOINT_GLOBALS",
           "load_local_checkpoint", "load_url_weights_only", "history_getattr"]


class MissingOpError(RuntimeError):
    """An ``mmcv.ops`` op that needs full mmcv's compiled extension was used."""


def point_sample(input: Tensor, points: Tensor, align_corners: bool = False, **kwargs) -> Tensor:
    """Sample ``input`` at normalized ``points``, like mmcv.ops.point_sample.

    Args:
        input: (N, C, H, W) feature map.
        points: (N, P, 2) or (N, Hp, Wp, 2) (x, y) coordinates in [0, 1].
        align_corners: as in ``F.grid_sample``.
        kwargs: passed to ``F.grid_sample`` (mode, padding_mode).

    Returns:
        (N, C, P) or (N, C, Hp, Wp).
    """
    flat = points.dim() == 3
    grid = points.unsqueeze(2) if flat else points  # (N, P, 1, 2) or (N, Hp, Wp, 2)
    out = F.grid_sample(input, 2.0 * grid - 1.0, align_corners=align_corners, **kwargs)
    return out.squeeze(3) if flat else out  # (N, C, P) or (N, C, Hp, Wp)


STAND_IN_OPS = {"point_sample": point_sample}


class _Missing:
    """Placeholder for an op of full mmcv: importable, raises when used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _fail(self, *args, **kwargs):
        raise MissingOpError(
            f"mmcv.ops.{self._name} needs the compiled ops of full mmcv (pip install mmcv), which does not build "
            f"against torch >= 2.10; this environment has mmcv-lite, where gradfilt's segmentation.compat provides "
            f"only {sorted(STAND_IN_OPS)}. Choose a model that does not use {self._name}."
        )

    __call__ = _fail

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._fail()


def _module_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(name)


def history_getattr(owner, name: str):
    """What a checkpoint's ``getattr(owner, name)`` may return: one of HistoryBuffer's statistics methods.

    Raises:
        pickle.UnpicklingError: for anything else (a crafted file reaching for ``eval`` or ``os.system``).
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    # the four every HistoryBuffer registers when it is made, and any registered with register_statistics
    allowed = {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}
    if owner is HistoryBuffer and isinstance(name, str) and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f"the checkpoint asks for getattr({owner!r}, {name!r}); only HistoryBuffer's "
                                 f"statistics methods {sorted(allowed)} are allowed")


def _checkpoint_globals() -> list:
    from mmengine.logging.history_buffer import HistoryBuffer

    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return [HistoryBuffer, (history_getattr, "builtins.getattr"), np.ndarray, np.dtype, core.multiarray._reconstruct,
            core.multiarray.scalar, *{type(np.dtype(t)) for t in (np.float32, np.float64, np.int64, np.int32)}]


MMENGINE_CHECKPOINT_GLOBALS = _checkpoint_globals()


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=True`` and mmengine's own types allowed.

    Args:
        filename: checkpoint path.
        map_location: as in ``torch.load``.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)


def load_url_weights_only(url: str, model_dir=None, map_location=None, progress: bool = True, **kwargs):
    """mmengine's download-and-load for remote checkpoints (``load_url``), loading the file weights-only with
    mmengine's own types allowed.

    Args:
        url: the checkpoint's address.
        model_dir: where the download is kept (default: torch's hub folder).
        map_location: as in ``torch.load``.
        progress: show a progress bar.
        **kwargs: passed on to ``torch.hub.load_state_dict_from_url`` (``check_hash``, ``file_name``).
    """
    with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
        return torch.hub.load_state_dict_from_url(url, model_dir=model_dir, map_location=map_location,
                                                  progress=progress, weights_only=True, **kwargs)


def install() -> bool:
    """Make mmseg 1.x usable here: the ``mmcv.ops`` stand-in if needed, and torch 2.x checkpoint loading.

    Returns:
        True if the ``mmcv.ops`` stand-in is in use (installed now or earlier), False if the real one is.
    """
    from mmengine.runner import checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=load_local_checkpoint, force=True)
    checkpoint.load_url = load_url_weights_only  # behind http(s)://, open-mmlab://, mmcls://, torchvision://
    current = sys.modules.get("mmcv.ops")
    if current is not None:
        return getattr(current, "_gradfilt_stand_in", False)
    try:
        importlib.import_module("mmcv.ops")
        return False
    except ImportError:
        sys.modules.pop("mmcv.ops", None)
    import mmcv

    ops = types.ModuleType("mmcv.ops", "gradfilt stand-in for mmcv's compiled ops (see segmentation/compat.py)")
    ops.__dict__.update(STAND_IN_OPS)
    ops.__getattr__ = _module_getattr  # PEP 562: every other name is a placeholder
    ops._gradfilt_stand_in = True
    sys.modules["mmcv.ops"] = ops
    mmcv.ops = ops
    return True
