# Vanilla BP on the paper's 5 layers; everything else frozen (frozen BN in eval mode).
custom_hooks = [dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.psp_modules', '~decode_head.bottleneck'])]
