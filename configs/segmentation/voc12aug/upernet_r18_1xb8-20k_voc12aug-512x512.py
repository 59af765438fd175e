# UPerNet, ResNet-18 (V1c) on augmented Pascal VOC12 (Table 3), started from MMSegmentation's
# Cityscapes-trained checkpoint; this file trains every layer (the "Vanilla All" column).
# Paper mIoU %: calibration 14.71, vanilla all 64.88, vanilla 5L 47.93, vanilla 10L 48.83, filter 5L 47.04, filter 10L 48.00.
_base_ = [
    '../_base_/models/upernet_r18.py', 'mmseg::_base_/datasets/pascal_voc12_aug.py',
    '../_base_/schedules/sgd_cosine_20k.py', '../_base_/gradfilt_runtime.py'
]
train_dataloader = dict(batch_size=8)  # the paper: batch 8 (1xb8)
model = dict(data_preprocessor=dict(size=(512, 512)), decode_head=dict(num_classes=21),
             auxiliary_head=dict(num_classes=21))
load_from = None  # mmseg publishes no Cityscapes-trained UPerNet-R18: pass load_from=<your checkpoint>
