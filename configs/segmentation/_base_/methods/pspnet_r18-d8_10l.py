# PSPNet-R18, the paper's 10 layers: the head and backbone.layer4 train.
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=[
        '',
        '~decode_head.conv_seg',
        '~decode_head.psp_modules',
        '~decode_head.bottleneck',
        '~backbone.layer4.0',
        '~backbone.layer4.1',
    ],
    filter_install=[
        dict(path='decode_head.bottleneck', patch_size=4, type='cbr'),
        dict(path='backbone.layer4.0', patch_size=4, type='basic_block'),
        dict(path='backbone.layer4.1', patch_size=4, type='basic_block'),
    ])
