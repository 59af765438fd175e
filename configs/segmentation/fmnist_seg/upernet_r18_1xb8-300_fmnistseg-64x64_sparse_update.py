# Sparse update from the base run's checkpoint (pass --cfg-options load_from=...).
_base_ = ['./upernet_r18_1xb8-300_fmnistseg-64x64.py', '../_base_/methods/sparse_update.py']
model = dict(auxiliary_head=None)  # trained only through the decode head's loss
