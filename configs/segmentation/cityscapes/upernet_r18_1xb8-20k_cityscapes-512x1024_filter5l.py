# Gradient filters on the paper's 5 layers: layer lists and patch sizes in the strategy file.
_base_ = ['./upernet_r18_1xb8-20k_cityscapes-512x1024.py', '../_base_/strategies/upernet_r18_filter5l.py']
model = dict(auxiliary_head=None)  # only head / last layers train: no auxiliary loss
