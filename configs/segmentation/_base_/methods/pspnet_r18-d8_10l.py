# PSPNet-R18, the paper's 10 layers: the head and backbone.layer4 train.
# The 5-layer list (pspnet_5l.py) plus the layers below; shared by the model's vanilla and
# gradient-filter configs (each method takes the keys it uses).
_base_ = ['./pspnet_5l.py']
layer_list = dict(
    freeze=_base_.layer_list['freeze'] + [
        '~backbone.layer4.0',
        '~backbone.layer4.1',
    ],
    filter_install=_base_.layer_list['filter_install'] + [
        dict(path='backbone.layer4.0', patch_size=4, type='basic_block'),
        dict(path='backbone.layer4.1', patch_size=4, type='basic_block'),
    ])
