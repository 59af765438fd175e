# Calibration: only the classifiers and the BatchNorm statistics move (the iteration count is set per model).
custom_hooks = [
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~auxiliary_head.conv_seg'],
         update_bn_stats=True),
]
