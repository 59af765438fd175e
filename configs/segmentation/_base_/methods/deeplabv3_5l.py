# DeepLabV3 (ResNet-18 or MobileNetV2 backbone), the paper's 5 layers: the ASPP head trains.
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=['', '~decode_head.conv_seg', '~decode_head.bottleneck', '~decode_head.aspp_modules'],
    filter_install=[
        dict(path='decode_head.bottleneck', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.0', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.1', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.2', patch_size=6, type='cbr'),
        dict(path='decode_head.aspp_modules.3', patch_size=9, type='cbr'),
    ])
