"""ArgMax and Reduction (Caffe's argmax_layer.cpp, reduction_layer.cpp)."""
