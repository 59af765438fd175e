# TinyTL: every weight frozen; conv biases, a lite residual beside every backbone block and the
# classifier conv train. BatchNorm is folded into the convs first (fuse_bn).
method = dict(type='tinytl')
fuse_bn = True
