# PSPNet (ResNet-18 or MobileNetV2 backbone), the paper's 5 layers: the pyramid pooling head trains.
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=['', '~decode_head.conv_seg', '~decode_head.psp_modules', '~decode_head.bottleneck'],
    filter_install=[
        dict(path='decode_head.bottleneck', patch_size=4, type='cbr'),
    ])
