# Vanilla BP on the layers the model's layer_list trains (its patch sizes are not used).
method = dict(type='vanilla')
