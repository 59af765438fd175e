# Gradient filters on the paper's 5 layers of DeepLabV3-R18 (released config's patch sizes):
# bottleneck [3], aspp_modules.0 [3], .1 [3] (dilation 12), .2 [6] (dilation 24), .3 [9] (dilation 36).
_base_ = ['./deeplabv3_r18-d8_1xb8-300_fmnistseg-64x64_vanilla5l.py']
custom_hooks = [
    dict(type='GradientFilterHook', filter_install=[
        dict(path='decode_head.bottleneck', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.0', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.1', patch_size=3, type='cbr'),
        dict(path='decode_head.aspp_modules.2', patch_size=6, type='cbr'),
        dict(path='decode_head.aspp_modules.3', patch_size=9, type='cbr'),
    ]),
    dict(type='FreezeLayersHook',
         freeze=['', '~decode_head.conv_seg', '~decode_head.bottleneck', '~decode_head.aspp_modules']),
]
