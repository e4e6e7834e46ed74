"""Caffe's own model-zoo deploy files (reference/zoo/, copied from BVLC Caffe's models/ folder) convert with
seeded weights and match OpenCV's Caffe importer end to end, in torch and in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

import ninport
from ninport.caffe import read_net
from ninport.caffe.seeded import write_seeded_caffemodel

ZOO = Path(__file__).resolve().parent.parent / "reference" / "zoo"
TOL = 1e-5


@pytest.mark.parametrize(
    "model, size, blobs",
    [
        ("bvlc_reference_caffenet", 227, ["pool5", "fc8", "prob"]),
        ("bvlc_alexnet", 227, ["norm2", "fc8", "prob"]),
        ("bvlc_googlenet", 224, ["inception_3a/output", "pool5/7x7_s1", "prob"]),
        ("bvlc_reference_rcnn_ilsvrc13", 227, ["norm2", "fc-rcnn"]),
        ("finetune_flickr_style", 227, ["fc8_flickr", "prob"]),
    ],
)
def test_zoo_model_matches_opencv(tmp_path, model, size, blobs):
    # Blobs compared are ones no in-place layer rewrites: OpenCV returns a layer's own output under its name
    # (before any in-place ReLU it did not fuse), where Caffe's blob holds the value after the chain.
    prototxt = ZOO / model / "deploy.prototxt"
    weights = tmp_path / f"{model}.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), weights, layout="v2", seed=3)
    x = np.random.default_rng(5).uniform(-100, 100, (2, 3, size, size)).astype(np.float32)

    cv = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    cv.setInput(x)
    refs = dict(zip(blobs, cv.forward(blobs)))

    module = ninport.load(prototxt, weights, input_shape=f"2,3,{size},{size}")
    with torch.no_grad():
        got = module.forward_blobs(torch.from_numpy(x))
    for blob in blobs:
        ref = refs[blob]
        out = got[blob].numpy().reshape(ref.shape)
        assert np.abs(out - ref).max() <= tolerance(blob) * np.abs(ref).max(), blob

    path = tmp_path / f"{model}.onnx"
    ninport.export_onnx(module, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    final = module.output_names[0]
    (out,) = session.run([final], {"data": x})
    ref = refs[final]
    assert np.abs(out.reshape(ref.shape) - ref).max() <= tolerance(final) * np.abs(ref).max()
    assert np.array_equal(out.reshape(len(x), -1).argmax(1), ref.reshape(len(x), -1).argmax(1))


def tolerance(blob: str) -> float:
    # A softmax of seeded logits in the hundreds turns their float32 rounding (checked at 1e-5 on the logits
    # themselves) into probability differences of about 1e-5 absolute: the probabilities get 1e-4.
    return 1e-4 if blob == "prob" else TOL
