# UPerNet, ResNet-18 (V1c): mmseg's primitive with the paper's backbone; datasets set num_classes.
_base_ = ['mmseg::_base_/models/upernet_r50.py']
norm_cfg = dict(type='BN', requires_grad=True)  # one process; use SyncBN with --launcher pytorch
model = dict(
    pretrained=None,
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[64, 128, 256, 512], norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, norm_cfg=norm_cfg))
