# Gradient filters on the paper's 10 layers (released patch sizes), same layers trained as _vanilla10l.
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.bottleneck', patch_size=4, type='cbr'),
        dict(path='backbone.layer4.0', patch_size=4, type='basic_block'),
        dict(path='backbone.layer4.1', patch_size=4, type='basic_block'),
    ]),
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.psp_modules', '~decode_head.bottleneck', '~backbone.layer4.0', '~backbone.layer4.1']),
]
