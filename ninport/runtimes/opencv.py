"""OpenCV's dnn module on the CPU, reading either the ONNX file or the Caffe files themselves.

OpenCV's Caffe importer is this project's independent reference for Caffe semantics; its ONNX importer is one
more consumer of the exported graph.
"""

from __future__ import annotations

import os

import numpy as np

from ninport.errors import NinportError
from ninport.runtimes.base import Runtime, read_onnx, with_outputs


class _OpenCv(Runtime):
    def _check_precision(self, precision: str) -> None:
        if precision != "fp32":
            raise NinportError(f"OpenCV's CPU backend computes in float32 only, not {precision}")

    def _setup(self, net, threads: int, input_names: list[str], output_names: list[str]) -> None:
        import cv2

        cv2.setNumThreads(threads)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.net = net
        self.input_names = input_names
        self.output_names = output_names

    def run(self, feeds, outputs=None):
        for name, array in feeds.items():
            self.net.setInput(np.ascontiguousarray(array, dtype=np.float32), name)
        names = list(outputs or self.output_names)
        return {n: np.asarray(v) for n, v in zip(names, self.net.forward(names))}


class OpenCvOnnx(_OpenCv):
    kind = "opencv-onnx"

    def __init__(self, model, *, provider: str, precision: str, threads: int, extra_outputs: list[str], warn):
        import cv2

        self._check_precision(precision)
        proto = read_onnx(model)
        if extra_outputs:
            proto = with_outputs(proto, extra_outputs)
        inits = {i.name for i in proto.graph.initializer}
        data = np.frombuffer(proto.SerializeToString(), np.uint8)
        self._setup(cv2.dnn.readNetFromONNX(data), threads, [i.name for i in proto.graph.input if i.name not in inits],
                    [o.name for o in proto.graph.output])

    def version(self) -> str:
        import cv2

        return f"OpenCV {cv2.__version__} ONNX importer, CPU"


class OpenCvCaffe(_OpenCv):
    """``model`` is ``(prototxt, caffemodel)``: file paths, or the prototxt text and the caffemodel bytes. Any blob
    name is an output; ``extra_outputs`` only sets what ``run`` returns by default."""

    kind = "opencv-caffe"

    def __init__(self, model, *, provider: str, precision: str, threads: int, extra_outputs: list[str], warn):
        import cv2

        self._check_precision(precision)
        if not (isinstance(model, tuple | list) and len(model) == 2):
            raise NinportError("opencv-caffe takes (prototxt, caffemodel)")
        prototxt, caffemodel = model
        for item in (prototxt, caffemodel):
            if isinstance(item, str | os.PathLike) and not os.path.exists(item):
                raise NinportError(f"{os.fspath(item)}: no such file")
        inputs: list[str] = []
        if isinstance(prototxt, bytes | str) and not os.path.exists(prototxt):
            text = prototxt.encode() if isinstance(prototxt, str) else prototxt
            net = cv2.dnn.readNetFromCaffe(np.frombuffer(text, np.uint8), np.frombuffer(caffemodel, np.uint8))
        else:
            from ninport.caffe import read_net

            inputs = list(read_net(prototxt).inputs)
            net = cv2.dnn.readNetFromCaffe(os.fspath(prototxt), os.fspath(caffemodel))
        outs = [net.getLayerNames()[i - 1] for i in np.asarray(net.getUnconnectedOutLayers()).ravel()]
        self._setup(net, threads, inputs, [*outs, *[n for n in extra_outputs if n not in outs]])

    def version(self) -> str:
        import cv2

        return f"OpenCV {cv2.__version__} Caffe importer, CPU"
