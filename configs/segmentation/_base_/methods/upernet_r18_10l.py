# UPerNet-R18, the paper's 10 layers: the 5 layers plus the lateral convs (and psp_modules.0/.1) train.
# The 5-layer list (upernet_r18_5l.py) plus the layers below; shared by the model's vanilla and
# gradient-filter configs (each method takes the keys it uses).
_base_ = ['./upernet_r18_5l.py']
layer_list = dict(
    freeze=_base_.layer_list['freeze'] + [
        '~decode_head.lateral_convs',
        '~decode_head.psp_modules.0',
        '~decode_head.psp_modules.1',
    ],
    filter_install=_base_.layer_list['filter_install'] + [
        dict(path='decode_head.lateral_convs.0', patch_size=8, type='cbr'),
        dict(path='decode_head.lateral_convs.1', patch_size=4, type='cbr'),
        dict(path='decode_head.lateral_convs.2', patch_size=2, type='cbr'),
    ])
