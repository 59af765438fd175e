# Sparse update (tiny-training's vocabulary): biases of the last 8 convs, weights of the last 2
# on half of their input channels (largest weight norm), the classifier conv whole. BatchNorm is
# folded into the convs first (fuse_bn), so every conv has a bias to train.
method = dict(type='sparse_update', n_bias_update=8, n_weight_update=2, weight_update_ratio=0.5)
fuse_bn = True
