"""Built-in converters, one Caffe layer family per module; importing this package registers them all."""

from ninport.torch.layers import activation, convolution, inner_product, normalization, pooling, structure

__all__ = ["activation", "convolution", "inner_product", "normalization", "pooling", "structure"]
