# PSPNet-MobileNetV2, the paper's 10 layers: the head, backbone.layer7.0 and layer6.2's last two convs train.
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=[
        '',
        '~decode_head.conv_seg',
        '~decode_head.psp_modules',
        '~decode_head.bottleneck',
        '~backbone.layer7.0.conv',
        '~backbone.layer6.2.conv.1',
        '~backbone.layer6.2.conv.2',
    ],
    filter_install=[
        dict(path='decode_head.bottleneck', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.0', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.2', patch_size=4, type='cbr'),
        dict(path='backbone.layer6.2.conv.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer6.2.conv.2', patch_size=4, type='cbr'),
    ])
