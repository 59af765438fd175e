# Vanilla BP on the paper's 10 layers; everything else frozen (frozen BN in eval mode).
custom_hooks = [dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.bottleneck', '~decode_head.aspp_modules', '~backbone.layer7.0.conv', '~backbone.layer6.2.conv.2'])]
