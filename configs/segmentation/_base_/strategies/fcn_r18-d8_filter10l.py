# Gradient filters on the paper's 10 layers (released patch sizes: all 2), same layers trained as _vanilla10l.
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.conv_cat', patch_size=2, type='cbr'),
        dict(path='decode_head.convs.0', patch_size=2, type='cbr'),
        dict(path='decode_head.convs.1', patch_size=2, type='cbr'),
        dict(path='backbone.layer4', patch_size=2, type='resnet_layer'),
        dict(path='backbone.layer3.1', patch_size=2, type='basic_block'),
    ]),
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.conv_cat', '~decode_head.convs', '~backbone.layer4', '~backbone.layer3.1']),
]
