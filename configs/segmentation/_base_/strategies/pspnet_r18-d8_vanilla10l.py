# Vanilla BP on the paper's 10 layers; everything else frozen (frozen BN in eval mode).
custom_hooks = [dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.psp_modules', '~decode_head.bottleneck', '~backbone.layer4.0', '~backbone.layer4.1'])]
