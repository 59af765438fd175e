# The paper's optimizer and cosine schedule (sgd_cosine_20k.py) over a CPU-sized run of 300 iterations.
_base_ = ['./sgd_cosine_20k.py']
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False, begin=0, end=300)]
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=300))
