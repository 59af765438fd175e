"""Run MMSegmentation 1.x on mmcv-lite: a stand-in for the compiled ``mmcv.ops``.

mmseg imports a few ``mmcv.ops`` symbols at import time, and PyPI's full mmcv (which has
them) does not compile against torch >= 2.10. :func:`install` registers a module
``mmcv.ops`` when the real one cannot be imported: ``point_sample`` is real (pure PyTorch,
``grid_sample``), every other name is a placeholder that raises :class:`MissingOpError`
naming the op when it is called or instantiated, never at import. With full mmcv installed
:func:`install` does nothing.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MissingOpError", "install", "point_sample", "STAND_IN_OPS"]


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


def install() -> bool:
    """Register the stand-in ``mmcv.ops`` if the compiled one is missing.

    Returns:
        True if the stand-in was installed (now or earlier), False if the real ``mmcv.ops`` is used.
    """
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
