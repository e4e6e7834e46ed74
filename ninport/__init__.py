"""ninport: read Caffe models as they were published and rebuild them in PyTorch and ONNX, exactly.

The Python API mirrors the CLI. Functions that need torch import it on first use, so ``import ninport`` and
``ninport inspect`` stay light.

    >>> import ninport
    >>> model = ninport.load("train_val.prototxt", "nin_imagenet.caffemodel")   # torch.nn.Module
    >>> ninport.export_onnx(model, "nin.onnx")
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load": "ninport.torch.build",
    "load_pt": "ninport.torch.build",
    "build_module": "ninport.torch.build",
    "save_pt": "ninport.torch.build",
    "export_onnx": "ninport.onnx.export",
    "convert": "ninport.convert",
    "register_layer": "ninport.torch.registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ninport' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
