# Calibration: classifiers + BatchNorm statistics, 1000 iterations.
_base_ = ['./pspnet_r18-d8_1xb8-20k_cityscapes-512x1024.py', '../_base_/methods/calibration.py']
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=False, begin=0, end=1000)]
train_cfg = dict(max_iters=1000, val_interval=1000)
