# FCN-R18, the paper's 10 layers: the head convs, backbone.layer4 and layer3.1 train (released patch sizes: all 2).
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=[
        '',
        '~decode_head.conv_seg',
        '~decode_head.conv_cat',
        '~decode_head.convs',
        '~backbone.layer4',
        '~backbone.layer3.1',
    ],
    filter_install=[
        dict(path='decode_head.conv_cat', patch_size=2, type='cbr'),
        dict(path='decode_head.convs.0', patch_size=2, type='cbr'),
        dict(path='decode_head.convs.1', patch_size=2, type='cbr'),
        dict(path='backbone.layer4', patch_size=2, type='resnet_layer'),
        dict(path='backbone.layer3.1', patch_size=2, type='basic_block'),
    ])
