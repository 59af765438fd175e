# Gradient filters on the paper's 5 layers: layer lists and patch sizes in ../_base_/methods.
_base_ = [
    './fcn_r18-d8_1xb8-20k_cityscapes-512x1024.py',
    '../_base_/methods/fcn_r18-d8_5l.py',
    '../_base_/methods/gradient_filter.py',
]
model = dict(auxiliary_head=None)  # only head / last layers train: no auxiliary loss
