"""Helpers for the per-layer tests: write a tiny net and its weights, run it through ninport's torch module,
its exported ONNX in onnxruntime, and OpenCV's Caffe importer, and compare with a tolerance relative to the
reference's largest magnitude."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

import ninport
from ninport.caffe.caffemodel import write_caffemodel

TOL = 1e-5


def write_net(directory: Path, text: str, weights: list[tuple[str, str, list[np.ndarray]]] | None = None,
              name: str = "net") -> tuple[Path, Path | None]:
    """Write ``name.prototxt`` (and ``name.caffemodel`` when weights are given) into ``directory``."""
    proto = directory / f"{name}.prototxt"
    proto.write_text(text)
    model = None
    if weights is not None:
        model = directory / f"{name}.caffemodel"
        write_caffemodel(model, weights, layout="v2")
    return proto, model


def rel_err(reference: np.ndarray, got: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert reference.shape == got.shape, (reference.shape, got.shape)
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    diff = float(np.max(np.abs(reference - got))) if reference.size else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(reference: np.ndarray, got: np.ndarray, what: str = "") -> None:
    err = rel_err(reference, got)
    assert err <= TOL, f"{what}: relative error {err:.3g} > {TOL:g}"


def torch_blobs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        blobs = model.forward_blobs(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
    return {k: v.detach().numpy() for k, v in blobs.items()}


def onnx_outputs(model, path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Export ``model`` with ninport (checked, dynamic batch), run it in onnxruntime, return its outputs."""
    ninport.export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.ascontiguousarray(v) for k, v in inputs.items()})))


def opencv_outputs(proto: Path, model: Path | None, inputs: dict[str, np.ndarray], blobs: list[str]
                   ) -> dict[str, np.ndarray]:
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model)) if model else cv2.dnn.readNetFromCaffe(str(proto))
    for name, value in inputs.items():
        net.setInput(np.ascontiguousarray(value), name)
    outs = net.forward(blobs)
    return dict(zip(blobs, outs))


def opencv_layer_outputs(proto: Path, model: Path | None, inputs: dict[str, np.ndarray], layer: str
                         ) -> list[np.ndarray]:
    """Every top of one layer in OpenCV (its ``forward`` names layers, not blobs, so a layer's second top
    needs ``forwardAndRetrieve``)."""
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model)) if model else cv2.dnn.readNetFromCaffe(str(proto))
    for name, value in inputs.items():
        net.setInput(np.ascontiguousarray(value), name)
    return list(net.forwardAndRetrieve([layer])[0])


def check_net(tmp_path: Path, proto: Path, model: Path | None, inputs: dict[str, np.ndarray],
              reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ninport's torch blobs and the exported ONNX's outputs against ``reference`` (blob name → array).

    Returns the torch blobs. Every reference blob must be a torch blob; those that are net outputs are also
    checked in onnxruntime.
    """
    shape = ";".join(f"{k}={','.join(map(str, v.shape))}" for k, v in inputs.items())
    module = ninport.load(proto, model, input_shape=shape)
    blobs = torch_blobs(module, inputs)
    for name, ref in reference.items():
        assert_close(ref, blobs[name], f"torch blob {name!r}")
    outs = onnx_outputs(module, tmp_path / f"{proto.stem}.onnx", inputs)
    checked = 0
    for name, ref in reference.items():
        if name in outs:
            assert_close(ref, outs[name], f"onnxruntime output {name!r}")
            checked += 1
    assert checked, f"no reference blob among the ONNX outputs {sorted(outs)}"
    return blobs
