# Gradient filters on the paper's 5 layers (released patch sizes), same layers trained as _vanilla5l.
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.conv_cat', patch_size=4, type='cbr'),
        dict(path='decode_head.convs.0', patch_size=4, type='cbr'),
        dict(path='decode_head.convs.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer4.1', patch_size=4, type='basic_block'),
    ]),
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.conv_cat', '~decode_head.convs', '~backbone.layer4.1']),
]
