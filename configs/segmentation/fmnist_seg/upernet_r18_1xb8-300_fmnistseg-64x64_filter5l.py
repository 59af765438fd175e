# Gradient filters on the paper's 5 layers of UPerNet-R18: fpn_bottleneck [8], fpn_convs.0 [8],
# .1 [4], .2 [2], bottleneck [2]; conv_seg trains too, everything else is frozen.
_base_ = ['./upernet_r18_1xb8-300_fmnistseg-64x64_vanilla5l.py']
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.fpn_bottleneck', patch_size=8, type='cbr'),
        dict(path='decode_head.fpn_convs.0', patch_size=8, type='cbr'),
        dict(path='decode_head.fpn_convs.1', patch_size=4, type='cbr'),
        dict(path='decode_head.fpn_convs.2', patch_size=2, type='cbr'),
        dict(path='decode_head.bottleneck', patch_size=2, type='cbr'),
    ]),
    dict(type='FreezeLayersHook',
         freeze=['', '~decode_head.conv_seg', '~decode_head.fpn_bottleneck', '~decode_head.fpn_convs',
                 '~decode_head.bottleneck']),
]
