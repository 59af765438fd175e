# Gradient filters on the paper's 5 layers (released patch sizes), same layers trained as _vanilla5l.
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.bottleneck', patch_size=4, type='cbr'),
    ]),
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.psp_modules', '~decode_head.bottleneck']),
]
