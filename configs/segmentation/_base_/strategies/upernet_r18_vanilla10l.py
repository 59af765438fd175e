# Vanilla BP on the paper's 10 layers; everything else frozen (frozen BN in eval mode).
custom_hooks = [dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.fpn_bottleneck', '~decode_head.fpn_convs', '~decode_head.bottleneck', '~decode_head.lateral_convs', '~decode_head.psp_modules.0', '~decode_head.psp_modules.1'])]
