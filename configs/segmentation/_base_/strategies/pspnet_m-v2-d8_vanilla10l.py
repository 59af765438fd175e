# Vanilla BP on the paper's 10 layers; everything else frozen (frozen BN in eval mode).
custom_hooks = [dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.psp_modules', '~decode_head.bottleneck', '~backbone.layer7.0.conv', '~backbone.layer6.2.conv.1', '~backbone.layer6.2.conv.2'])]
