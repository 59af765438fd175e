# PSPNet-MobileNetV2, the paper's 10 layers: the head, backbone.layer7.0 and layer6.2's last two convs train.
# The 5-layer list (pspnet_5l.py) plus the layers below; shared by the model's vanilla and
# gradient-filter configs (each method takes the keys it uses).
_base_ = ['./pspnet_5l.py']
layer_list = dict(
    freeze=_base_.layer_list['freeze'] + [
        '~backbone.layer7.0.conv',
        '~backbone.layer6.2.conv.1',
        '~backbone.layer6.2.conv.2',
    ],
    filter_install=_base_.layer_list['filter_install'] + [
        dict(path='backbone.layer7.0.conv.0', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer7.0.conv.2', patch_size=4, type='cbr'),
        dict(path='backbone.layer6.2.conv.1', patch_size=4, type='cbr'),
        dict(path='backbone.layer6.2.conv.2', patch_size=4, type='cbr'),
    ])
