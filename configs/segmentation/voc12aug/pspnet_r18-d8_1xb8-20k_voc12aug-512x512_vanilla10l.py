# Vanilla BP on the paper's 10 layers: layer lists and patch sizes in ../_base_/methods.
_base_ = [
    './pspnet_r18-d8_1xb8-20k_voc12aug-512x512.py',
    '../_base_/methods/pspnet_r18-d8_10l.py',
    '../_base_/methods/vanilla.py',
]
model = dict(auxiliary_head=None)  # only head / last layers train: no auxiliary loss
