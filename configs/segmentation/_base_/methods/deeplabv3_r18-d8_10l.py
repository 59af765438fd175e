# DeepLabV3-R18, the paper's 10 layers: the ASPP head and backbone.layer4's four 3x3 convs train.
# The 5-layer list (deeplabv3_5l.py) plus the layers below; shared by the model's vanilla and
# gradient-filter configs (each method takes the keys it uses).
_base_ = ['./deeplabv3_5l.py']
layer_list = dict(
    freeze=_base_.layer_list['freeze'] + [
        '~backbone.layer4.0.conv1',
        '~backbone.layer4.0.conv2',
        '~backbone.layer4.1.conv1',
        '~backbone.layer4.1.conv2',
    ],
    filter_install=_base_.layer_list['filter_install'] + [
        dict(path='backbone.layer4.0.conv1', patch_size=2, type='conv'),
        dict(path='backbone.layer4.0.conv2', patch_size=2, type='conv'),
        dict(path='backbone.layer4.1.conv1', patch_size=2, type='conv'),
        dict(path='backbone.layer4.1.conv2', patch_size=2, type='conv'),
    ])
