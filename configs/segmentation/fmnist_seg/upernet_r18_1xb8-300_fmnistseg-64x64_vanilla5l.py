# Vanilla BP on the paper's 5 layers of UPerNet-R18: decode_head.{fpn_bottleneck, fpn_convs, bottleneck} + conv_seg.
_base_ = ['./upernet_r18_1xb8-300_fmnistseg-64x64.py']
model = dict(auxiliary_head=None)
custom_hooks = [
    dict(type='FreezeLayersHook',
         freeze=['', '~decode_head.conv_seg', '~decode_head.fpn_bottleneck', '~decode_head.fpn_convs',
                 '~decode_head.bottleneck']),
]
