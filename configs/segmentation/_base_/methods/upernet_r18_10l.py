# UPerNet-R18, the paper's 10 layers: the 5 layers plus the lateral convs (and psp_modules.0/.1) train.
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=[
        '',
        '~decode_head.conv_seg',
        '~decode_head.fpn_bottleneck',
        '~decode_head.fpn_convs',
        '~decode_head.bottleneck',
        '~decode_head.lateral_convs',
        '~decode_head.psp_modules.0',
        '~decode_head.psp_modules.1',
    ],
    filter_install=[
        dict(path='decode_head.fpn_bottleneck', patch_size=8, type='cbr'),
        dict(path='decode_head.fpn_convs.0', patch_size=8, type='cbr'),
        dict(path='decode_head.fpn_convs.1', patch_size=4, type='cbr'),
        dict(path='decode_head.fpn_convs.2', patch_size=2, type='cbr'),
        dict(path='decode_head.bottleneck', patch_size=2, type='cbr'),
        dict(path='decode_head.lateral_convs.0', patch_size=8, type='cbr'),
        dict(path='decode_head.lateral_convs.1', patch_size=4, type='cbr'),
        dict(path='decode_head.lateral_convs.2', patch_size=2, type='cbr'),
    ])
