# PSPNet, ResNet-18 (V1c), output stride 8 on augmented Pascal VOC12 (Table 3), started from MMSegmentation's
# Cityscapes-trained checkpoint; this file trains every layer (the "Vanilla All" column).
# Paper mIoU %: calibration 12.86, vanilla all 55.01, vanilla 5L 39.54, vanilla 10L 53.15, filter 5L 39.34, filter 10L 50.88.
_base_ = [
    '../_base_/models/pspnet_r18-d8.py', 'mmseg::_base_/datasets/pascal_voc12_aug.py',
    '../_base_/schedules/sgd_cosine_20k.py', '../_base_/gradfilt_runtime.py'
]
train_dataloader = dict(batch_size=8)  # the paper: batch 8 (1xb8)
model = dict(data_preprocessor=dict(size=(512, 512)), decode_head=dict(num_classes=21),
             auxiliary_head=dict(num_classes=21))
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/pspnet/pspnet_r18-d8_512x1024_80k_cityscapes/pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth'
