"""Scale and Bias (Caffe's scale_layer.cpp, bias_layer.cpp): broadcast from axis, one or two bottoms."""
