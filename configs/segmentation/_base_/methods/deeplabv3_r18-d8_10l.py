# DeepLabV3-R18, the paper's 10 layers: the ASPP head and backbone.layer4's four 3x3 convs train.
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=[
        '',
        '~decode_head.conv_seg',
        '~decode_head.bottleneck',
        '~decode_head.aspp_modules',
        '~backbone.layer4.0.conv1',
        '~backbone.layer4.0.conv2',
        '~backbone.layer4.1.conv1',
        '~backbone.layer4.1.conv2',
    ],
    filter_install=[
        dict(path='decode_head.bottleneck', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.0', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.1', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.2', patch_size=6, type='cbr'),
        dict(path='decode_head.aspp_modules.3', patch_size=9, type='cbr'),
        dict(path='backbone.layer4.0.conv1', patch_size=2, type='conv'),
        dict(path='backbone.layer4.0.conv2', patch_size=2, type='conv'),
        dict(path='backbone.layer4.1.conv1', patch_size=2, type='conv'),
        dict(path='backbone.layer4.1.conv2', patch_size=2, type='conv'),
    ])
