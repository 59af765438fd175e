# DeepLabV3-MobileNetV2, the paper's 10 layers: the ASPP head, backbone.layer7.0 and layer6.2's projection train.
# layer7.0.conv.1 is a 3x3 depthwise conv with dilation 4: the released r = 3 does not divide it
# (gradfilt needs r | d for dilated convs), so r = 4 there.
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=[
        '',
        '~decode_head.conv_seg',
        '~decode_head.bottleneck',
        '~decode_head.aspp_modules',
        '~backbone.layer7.0.conv',
        '~backbone.layer6.2.conv.2',
    ],
    filter_install=[
        dict(path='decode_head.bottleneck', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.0', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.1', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.2', patch_size=6, type='cbr'),
        dict(path='decode_head.aspp_modules.3', patch_size=9, type='cbr'),
        dict(path='backbone.layer7.0.conv.0', patch_size=3, type='cbr'),
        dict(path='backbone.layer7.0.conv.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.2', patch_size=3, type='cbr'),
        dict(path='backbone.layer6.2.conv.2', patch_size=3, type='cbr'),
    ])
