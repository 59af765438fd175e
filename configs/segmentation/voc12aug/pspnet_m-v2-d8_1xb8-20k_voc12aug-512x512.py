# PSPNet, MobileNetV2, output stride 8 on augmented Pascal VOC12 (Table 3), started from MMSegmentation's
# Cityscapes-trained checkpoint; this file trains every layer (the "Vanilla All" column).
# Paper mIoU %: calibration 14.20, vanilla all 48.48, vanilla 5L 36.35, vanilla 10L 46.01, filter 5L 36.14, filter 10L 44.90.
_base_ = [
    '../_base_/models/pspnet_m-v2-d8.py', 'mmseg::_base_/datasets/pascal_voc12_aug.py',
    '../_base_/schedules/sgd_cosine_20k.py', '../_base_/gradfilt_runtime.py'
]
train_dataloader = dict(batch_size=8)  # the paper: batch 8 (1xb8)
model = dict(data_preprocessor=dict(size=(512, 512)), decode_head=dict(num_classes=21),
             auxiliary_head=dict(num_classes=21))
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/mobilenet_v2/pspnet_m-v2-d8_512x1024_80k_cityscapes/pspnet_m-v2-d8_512x1024_80k_cityscapes_20200825_124817-19e81d51.pth'
