"""OpenVINO on the CPU: the ONNX file read as it is, compiled for float32 (or f16/bf16 when asked for)."""

from __future__ import annotations

import numpy as np

from ninport.runtimes.base import Runtime, cast_feeds, read_onnx, with_outputs


class OpenVino(Runtime):
    """OpenVINO's CPU plugin. Its default lets the plugin compute in bf16/f16 on CPUs that have them; here the
    precision is set explicitly so that a float32 check means float32. ``prepare(batch)`` compiles for that
    batch size (a static shape lets OpenVINO pick its best kernels)."""

    kind = "openvino"

    def __init__(self, model, *, provider: str, precision: str, threads: int, extra_outputs: list[str], warn,
                 device: str = "CPU"):
        import openvino as ov

        self.precision = precision
        self.device = device
        self.core = ov.Core()
        proto = read_onnx(model)
        if extra_outputs:
            proto = with_outputs(proto, extra_outputs)
        self._bytes = proto.SerializeToString()
        self.config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_PRECISION_HINT": {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}[precision]}
        inits = {i.name for i in proto.graph.initializer}
        self.input_names = [i.name for i in proto.graph.input if i.name not in inits]
        self.output_names = [o.name for o in proto.graph.output]
        self._item_shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim][1:]
                             for i in proto.graph.input if i.name not in inits}
        self._types = {}
        self.compiled = self._compile(None)

    def _compile(self, batch: int | None):
        graph = self.core.read_model(self._bytes, b"")
        if batch is not None:
            graph.reshape({name: [batch, *shape] for name, shape in self._item_shapes.items()})
        compiled = self.core.compile_model(graph, self.device, self.config)
        self._types = {p.get_any_name(): np.dtype(p.get_element_type().to_dtype()) for p in compiled.inputs}
        self._by_name = {}
        for port in compiled.outputs:
            for tensor_name in port.get_names():
                self._by_name[tensor_name] = port
        self.request = compiled.create_infer_request()
        return compiled

    def version(self) -> str:
        import openvino

        hint = self.config["INFERENCE_PRECISION_HINT"]
        return f"OpenVINO {openvino.__version__.split('-')[0]}, {self.device}, {hint}"

    def prepare(self, batch: int) -> None:
        self.compiled = self._compile(batch)

    def run(self, feeds, outputs=None):
        result = self.request.infer(cast_feeds(feeds, self._types))
        names = list(outputs or self.output_names)
        return {n: np.asarray(result[self._by_name[n]]) for n in names if n in self._by_name}
