"""Built-in converters, one Caffe layer family per module; importing this package registers them all."""

from ninport.torch.layers import (
    activation,
    convolution,
    detection,
    eltwise,
    embed,
    fork_basic,
    fork_normalization,
    fork_proposal,
    fork_resize,
    fork_roi,
    inner_product,
    normalization,
    pooling,
    reduction,
    scale,
    structure,
)

__all__ = [
    "activation",
    "convolution",
    "detection",
    "eltwise",
    "embed",
    "fork_basic",
    "fork_normalization",
    "fork_proposal",
    "fork_resize",
    "fork_roi",
    "inner_product",
    "normalization",
    "pooling",
    "reduction",
    "scale",
    "structure",
]
