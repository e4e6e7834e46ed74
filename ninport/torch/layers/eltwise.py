"""Eltwise (Caffe's eltwise_layer.cpp): PROD, SUM with coefficients, MAX."""
