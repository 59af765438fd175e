"""Semantic segmentation on MMSegmentation 1.x with gradient filters (in progress).

``segmentation.compat`` makes mmseg 1.2 importable on mmcv-lite; hooks, configs, the
train/test wrappers and the Fashion-MNIST segmentation set are tracked by the segmentation issue.
"""
