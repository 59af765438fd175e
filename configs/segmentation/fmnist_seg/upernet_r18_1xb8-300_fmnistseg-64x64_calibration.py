# Calibration: classifiers + BatchNorm statistics. Start from --cfg-options load_from=<checkpoint>.
_base_ = ['./upernet_r18_1xb8-300_fmnistseg-64x64.py']
custom_hooks = [
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~auxiliary_head.conv_seg'],
         update_bn_stats=True),
]
