# FCN, ResNet-18 (V1c), output stride 8 on augmented Pascal VOC12 (Table 3), started from MMSegmentation's
# Cityscapes-trained checkpoint; this file trains every layer (the "Vanilla All" column).
# Paper mIoU %: calibration 10.95, vanilla all 45.22, vanilla 5L 27.41, vanilla 10L 43.87, filter 5L 27.42, filter 10L 36.30.
_base_ = [
    '../_base_/models/fcn_r18-d8.py', 'mmseg::_base_/datasets/pascal_voc12_aug.py',
    '../_base_/schedules/sgd_cosine_20k.py', '../_base_/gradfilt_runtime.py'
]
train_dataloader = dict(batch_size=8)  # the paper: batch 8 (1xb8)
model = dict(data_preprocessor=dict(size=(512, 512)), decode_head=dict(num_classes=21),
             auxiliary_head=dict(num_classes=21))
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/fcn/fcn_r18-d8_512x1024_80k_cityscapes/fcn_r18-d8_512x1024_80k_cityscapes_20201225_021327-6c50f8b4.pth'
