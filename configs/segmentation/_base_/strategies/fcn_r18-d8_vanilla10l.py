# Vanilla BP on the paper's 10 layers; everything else frozen (frozen BN in eval mode).
custom_hooks = [dict(type='FreezeLayersHook', freeze=['', '~decode_head.conv_seg', '~decode_head.conv_cat', '~decode_head.convs', '~backbone.layer4', '~backbone.layer3.1'])]
