# Gradient filters on the paper's 10 layers (released patch sizes), same layers trained as _vanilla10l.
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.bottleneck', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.0', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.2', patch_size=4, type='cbr'),
        dict(path='backbone.layer6.2.conv.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer6.2.conv.2', patch_size=4, type='cbr'),
    ]),
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.psp_modules', '~decode_head.bottleneck', '~backbone.layer7.0.conv', '~backbone.layer6.2.conv.1', '~backbone.layer6.2.conv.2']),
]
