# Gradient filters where the model's layer_list puts them, on the layers it trains.
method = dict(type='gradient_filter')
