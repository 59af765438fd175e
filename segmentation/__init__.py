"""Semantic segmentation on MMSegmentation 1.x with gradfilt's training methods.

Modules: ``compat`` (the mmcv.ops stand-in on mmcv-lite, torch 2.x checkpoint loading;
installed by the entry points, ``train`` / ``test`` / ``report``, before mmseg is imported),
``runner`` (``MethodRunner``: applies the config's method to the built model), ``datasets``
(the Fashion-MNIST segmentation set), ``train`` / ``test`` (mmengine Runner wrappers).
Code that imports ``segmentation.runner`` or ``segmentation.datasets`` directly calls
``segmentation.compat.install()`` first.
"""
