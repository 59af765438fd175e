# Gradient filters on the paper's 10 layers (released patch sizes), same layers trained as _vanilla10l.
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.fpn_bottleneck', patch_size=8, type='cbr'),
        dict(path='decode_head.fpn_convs.0', patch_size=8, type='cbr'),
        dict(path='decode_head.fpn_convs.1', patch_size=4, type='cbr'),
        dict(path='decode_head.fpn_convs.2', patch_size=2, type='cbr'),
        dict(path='decode_head.bottleneck', patch_size=2, type='cbr'),
        dict(path='decode_head.lateral_convs.0', patch_size=8, type='cbr'),
        dict(path='decode_head.lateral_convs.1', patch_size=4, type='cbr'),
        dict(path='decode_head.lateral_convs.2', patch_size=2, type='cbr'),
    ]),
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.fpn_bottleneck', '~decode_head.fpn_convs', '~decode_head.bottleneck', '~decode_head.lateral_convs', '~decode_head.psp_modules.0', '~decode_head.psp_modules.1']),
]
