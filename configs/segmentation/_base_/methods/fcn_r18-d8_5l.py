# FCN-R18, the paper's 5 layers: the head convs and backbone.layer4.1 train.
# What trains (freeze) and where the filters go, with the released patch sizes (filter_install);
# shared by the model's vanilla and gradient-filter configs (each method takes the keys it uses).
layer_list = dict(
    freeze=['', '~decode_head.conv_seg', '~decode_head.conv_cat', '~decode_head.convs', '~backbone.layer4.1'],
    filter_install=[
        dict(path='decode_head.conv_cat', patch_size=4, type='cbr'),
        dict(path='decode_head.convs.0', patch_size=4, type='cbr'),
        dict(path='decode_head.convs.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer4.1', patch_size=4, type='basic_block'),
    ])
