# UPerNet with a ResNet-18 (V1c) backbone on the Fashion-MNIST segmentation set, all layers
# trained from random weights; heads narrowed to 128 / 64 channels for the 64x64 CPU runs.
_base_ = [
    '../_base_/models/upernet_r18.py', '../_base_/datasets/fmnist_seg.py',
    '../_base_/schedules/sgd_cosine_fmnist.py', '../_base_/gradfilt_runtime.py'
]
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[73.0] * 3, std=[90.0] * 3, bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
    size=(64, 64))
model = dict(data_preprocessor=data_preprocessor, decode_head=dict(channels=128, num_classes=11),
             auxiliary_head=dict(channels=64, num_classes=11))
