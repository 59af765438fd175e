"""Semantic segmentation on MMSegmentation 1.x with gradient filters.

Importing this package runs :func:`segmentation.compat.install` (the mmcv.ops stand-in on
mmcv-lite, torch 2.x checkpoint loading) so that mmseg can be imported after it.
Modules: ``compat``, ``hooks`` (GradientFilterHook, FreezeLayersHook), ``datasets`` (the
Fashion-MNIST segmentation set), ``train`` / ``test`` (mmengine Runner wrappers).
"""

from .compat import install

install()
