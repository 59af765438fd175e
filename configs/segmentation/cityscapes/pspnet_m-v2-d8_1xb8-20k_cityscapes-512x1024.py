# PSPNet, MobileNetV2, output stride 8 on Cityscapes with the paper's methods, from an ImageNet backbone as
# mmseg's own Cityscapes recipes; this file trains every layer. No published numbers.
_base_ = [
    '../_base_/models/pspnet_m-v2-d8.py', 'mmseg::_base_/datasets/cityscapes.py',
    '../_base_/schedules/sgd_cosine_20k.py', '../_base_/gradfilt_runtime.py'
]
train_dataloader = dict(batch_size=8)  # the paper: batch 8 (1xb8)
model = dict(pretrained='mmcls://mobilenet_v2', data_preprocessor=dict(size=(512, 1024)), decode_head=dict(num_classes=19),
             auxiliary_head=dict(num_classes=19))
load_from = None
