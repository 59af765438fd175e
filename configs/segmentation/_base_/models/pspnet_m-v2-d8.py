# PSPNet, MobileNetV2, output stride 8: mmseg's primitive with the paper's backbone; datasets set num_classes.
_base_ = ['mmseg::_base_/models/pspnet_r50-d8.py']
norm_cfg = dict(type='BN', requires_grad=True)  # one process; use SyncBN with --launcher pytorch
model = dict(
    pretrained=None,
    backbone=dict(_delete_=True, type='MobileNetV2', widen_factor=1., strides=(1, 2, 2, 1, 1, 1, 1),
                  dilations=(1, 1, 1, 2, 2, 4, 4), out_indices=(1, 2, 4, 6), norm_cfg=norm_cfg),
    decode_head=dict(in_channels=320, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=96, norm_cfg=norm_cfg))
