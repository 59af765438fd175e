# Gradient filters on the paper's 10 layers: layer lists and patch sizes in the strategy file.
_base_ = ['./pspnet_r18-d8_1xb8-20k_cityscapes-512x1024.py', '../_base_/strategies/pspnet_r18-d8_filter10l.py']
model = dict(auxiliary_head=None)  # only head / last layers train: no auxiliary loss
