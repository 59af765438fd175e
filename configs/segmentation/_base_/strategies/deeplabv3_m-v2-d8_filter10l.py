# Gradient filters on the paper's 10 layers (released patch sizes), same layers trained as _vanilla10l.
# layer7.0.conv.1 is a 3x3 depthwise conv with dilation 4: the released r = 3 does not divide it
# (gradfilt needs r | d for dilated convs), so r = 4 there.
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.bottleneck', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.0', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.1', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.2', patch_size=6, type='cbr'),
        dict(path='decode_head.aspp_modules.3', patch_size=9, type='cbr'),
        dict(path='backbone.layer7.0.conv.0', patch_size=3, type='cbr'),
        dict(path='backbone.layer7.0.conv.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.2', patch_size=3, type='cbr'),
        dict(path='backbone.layer6.2.conv.2', patch_size=3, type='cbr'),
    ]),
    dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.bottleneck', '~decode_head.aspp_modules', '~backbone.layer7.0.conv', '~backbone.layer6.2.conv.2']),
]
