# Vanilla BP on the paper's 5 layers of DeepLabV3-R18: decode_head.{conv_seg, bottleneck, aspp_modules}.
_base_ = ['./deeplabv3_r18-d8_1xb8-300_fmnistseg-64x64.py']
model = dict(auxiliary_head=None)  # nothing below the head trains, so the auxiliary loss has no use
custom_hooks = [
    dict(type='FreezeLayersHook',
         freeze=['', '~decode_head.conv_seg', '~decode_head.bottleneck', '~decode_head.aspp_modules']),
]
