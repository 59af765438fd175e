# Calibration: only the classifiers and the BatchNorm statistics move (the iteration count is set per model).
method = dict(
    type='vanilla',
    freeze=['', '~decode_head.conv_seg', '~auxiliary_head.conv_seg'],
    update_frozen_bn_stats=True)
