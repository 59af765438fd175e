# Gradient filters on the paper's 5 layers (the layer list and patch sizes of Table 3's configs).
_base_ = [
    './upernet_r18_1xb8-300_fmnistseg-64x64.py',
    '../_base_/methods/upernet_r18_5l.py',
    '../_base_/methods/gradient_filter.py',
]
model = dict(auxiliary_head=None)  # nothing below the head trains: no auxiliary loss
