# Gradient filters on the paper's 10 layers (released patch sizes), same layers trained as _vanilla10l.
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.bottleneck', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.0', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.1', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.2', patch_size=6, type='cbr'),
        dict(path='decode_head.aspp_modules.3', patch_size=9, type='cbr'),
        dict(path='backbone.layer4.0.conv1', patch_size=2, type='conv'),
        dict(path='backbone.layer4.0.conv2', patch_size=2, type='conv'),
        dict(path='backbone.layer4.1.conv1', patch_size=2, type='conv'),
        dict(path='backbone.layer4.1.conv2', patch_size=2, type='conv'),
    ]),
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.bottleneck', '~decode_head.aspp_modules', '~backbone.layer4.0.conv1', '~backbone.layer4.0.conv2', '~backbone.layer4.1.conv1', '~backbone.layer4.1.conv2']),
]
