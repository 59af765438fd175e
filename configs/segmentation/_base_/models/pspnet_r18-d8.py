# PSPNet, ResNet-18 (V1c), output stride 8: mmseg's primitive with the paper's backbone; datasets set num_classes.
_base_ = ['mmseg::_base_/models/pspnet_r50-d8.py']
norm_cfg = dict(type='BN', requires_grad=True)  # one process; use SyncBN with --launcher pytorch
model = dict(
    pretrained=None,
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=128, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, norm_cfg=norm_cfg))
