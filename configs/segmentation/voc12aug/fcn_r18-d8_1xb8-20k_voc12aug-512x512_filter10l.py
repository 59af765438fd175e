# Gradient filters on the paper's 10 layers: layer lists and patch sizes in the strategy file.
_base_ = ['./fcn_r18-d8_1xb8-20k_voc12aug-512x512.py', '../_base_/strategies/fcn_r18-d8_filter10l.py']
model = dict(auxiliary_head=None)  # only head / last layers train: no auxiliary loss
