# DeepLabV3 with a ResNet-18 (V1c) backbone on the Fashion-MNIST segmentation set, all layers
# trained from random weights (the "pretraining" the strategy configs start from).
_base_ = [
    'mmseg::_base_/models/deeplabv3_r50-d8.py', '../_base_/datasets/fmnist_seg.py',
    '../_base_/schedules/sgd_cosine_fmnist.py', '../_base_/gradfilt_runtime.py'
]
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[73.0] * 3, std=[90.0] * 3, bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
    size=(64, 64))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=128, num_classes=11, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=11, norm_cfg=norm_cfg))
