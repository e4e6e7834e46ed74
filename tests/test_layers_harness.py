"""Shared harness for the per-layer tests (tests/test_layers_*.py): build a tiny net from prototxt text, run it
in torch, export it with ``ninport.export_onnx`` and run the file in onnxruntime, optionally run OpenCV's Caffe
importer on the same files, and compare each with a reference at 1e-5 of the reference's largest magnitude.

It holds no tests; it is a ``test_*`` module only to sit with the files it serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

import ninport
from ninport.caffe.caffemodel import write_caffemodel
from ninport.caffe.load import read_net
from ninport.caffe.seeded import write_seeded_caffemodel

TOL = 1e-5


def input_header(**shapes: Sequence[int]) -> str:
    """Net inputs in the ``input``/``input_shape`` form: ``input_header(data=(2, 3, 4, 5))``."""
    return "".join(
        f'input: "{name}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n' for name, shape in shapes.items()
    )


def layer_text(name: str, type_: str, bottoms: Sequence[str], tops: Sequence[str], param: str = "") -> str:
    blobs = " ".join([f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops])
    return f'layer {{ name: "{name}" type: "{type_}" {blobs} {param} }}\n'


class LayerNet:
    """A prototxt (and caffemodel, when the net has weights) in a tmp dir, with runners for every backend."""

    def __init__(self, directory: Path, text: str, blobs: list[tuple[str, str, list[np.ndarray]]] | None = None,
                 seed: int | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.prototxt = directory / "net.prototxt"
        self.prototxt.write_text(text)
        self.caffemodel: Path | None = None
        if blobs is not None:
            self.caffemodel = directory / "net.caffemodel"
            write_caffemodel(self.caffemodel, [(n, t, [np.asarray(a, dtype=np.float32) for a in arrays])
                                               for n, t, arrays in blobs])
        elif seed is not None:
            path = directory / "net.caffemodel"
            net = write_seeded_caffemodel(read_net(self.prototxt), path, layout="v2", seed=seed)
            if any(layer.blobs for layer in net.layers):
                self.caffemodel = path
        self.module = ninport.load(self.prototxt, self.caffemodel)

    def torch(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.module(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    def onnxruntime(self, inputs: dict[str, np.ndarray], **export_options) -> list[np.ndarray]:
        path = self.directory / "net.onnx"
        ninport.export_onnx(self.module, path, **export_options)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(self.module.output_names, inputs)

    def opencv(self, inputs: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """OpenCV's Caffe importer on the same files; ``outputs`` are layer names (default: the last layer)."""
        args = [str(self.prototxt)] + ([str(self.caffemodel)] if self.caffemodel else [])
        net = cv2.dnn.readNetFromCaffe(*args)
        for name, value in inputs.items():
            net.setInput(value, name)
        if outputs:
            return list(net.forward(list(outputs)))
        return [net.forward()]


def assert_close(got: np.ndarray, expected: np.ndarray, what: str, tol: float = TOL) -> None:
    """|got - expected| within ``tol`` of the largest magnitude of ``expected`` (exact when that is 0)."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    err = float(np.abs(got - expected).max()) if expected.size else 0.0
    assert err <= tol * scale if scale > 0 else err == 0, f"{what}: max abs error {err:.3g}, scale {scale:.3g}"


def check_backends(net: LayerNet, inputs: dict[str, np.ndarray], expected: Sequence[np.ndarray],
                   opencv: bool = False, **export_options) -> None:
    """torch, onnxruntime (and OpenCV when it implements the layer) against the reference outputs."""
    backends = {"torch": net.torch(inputs), "onnxruntime": net.onnxruntime(inputs, **export_options)}
    if opencv:
        backends["opencv"] = net.opencv(inputs)[-1:]
        expected = list(expected)[-1:]
    for name, outs in backends.items():
        assert len(outs) == len(expected), name
        for i, (out, ref) in enumerate(zip(outs, expected)):
            assert_close(out, ref, f"{name} output {i}")
