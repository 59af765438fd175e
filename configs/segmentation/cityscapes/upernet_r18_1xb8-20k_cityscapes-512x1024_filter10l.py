# Gradient filters on the paper's 10 layers: layer lists and patch sizes in ../_base_/methods.
_base_ = [
    './upernet_r18_1xb8-20k_cityscapes-512x1024.py',
    '../_base_/methods/upernet_r18_10l.py',
    '../_base_/methods/gradient_filter.py',
]
model = dict(auxiliary_head=None)  # only head / last layers train: no auxiliary loss
