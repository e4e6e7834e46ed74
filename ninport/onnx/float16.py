"""A float16 copy of a float32 ONNX model: weights and every float tensor in half precision, inputs and
outputs kept float32 (a Cast at each), so callers feed and read the same arrays as with the float32 file.

Tensor names are kept, so a blob is still found under its Caffe name; only a graph output's half-precision
value moves to ``<name>.fp16``, the Cast that follows it writes the float32 output under the blob's name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ninport.errors import NinportError

FP16_MAX = float(np.finfo(np.float16).max)
# The relative tolerance a float16 model is held to against float32: float16 keeps 11 significant bits
# (unit roundoff 4.9e-4) and NiN's blobs land 4e-4..9e-4 from float32, so 1e-2 leaves room for deeper nets
# while a wrong layer (off by whole percents) still fails.
FP16_RTOL = 1e-2


def _half(tensor: onnx.TensorProto) -> tuple[onnx.TensorProto, int]:
    """The tensor in float16, and how many of its values were beyond float16's range (clipped to ±65504)."""
    array = numpy_helper.to_array(tensor).astype(np.float64)
    overflow = int(np.count_nonzero(np.abs(array[np.isfinite(array)]) > FP16_MAX))
    half = numpy_helper.from_array(np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16), tensor.name)
    return half, overflow


def _constant_to_tensor(node: onnx.NodeProto) -> None:
    """Turn a Constant's ``value_float(s)`` into a ``value`` tensor, which the loop below then halves."""
    for attr in list(node.attribute):
        if attr.name in ("value_float", "value_floats"):
            values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
            node.attribute.remove(attr)
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(values)))


def is_float16(model: onnx.ModelProto) -> bool:
    """True when the model's weights are mostly float16 (a half-precision export)."""
    kinds = [i.data_type for i in model.graph.initializer]
    return kinds.count(TensorProto.FLOAT16) > kinds.count(TensorProto.FLOAT)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` (see the module docstring); the original is not changed.

    Raises ``NinportError`` when the result does not pass ``onnx.checker`` with shape inference, which is
    how an operator that needs float32 inputs would show up.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    overflow = 0

    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            half, clipped = _half(init)
            overflow += clipped
            graph.initializer[index].CopyFrom(half)
    for node in graph.node:
        if node.op_type == "Constant":
            _constant_to_tensor(node)
        elif node.op_type == "ConstantOfShape" and not node.attribute:
            # Without a value ConstantOfShape makes float32 zeros (onnx/defs/generator/defs.cc).
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float32))))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                half, clipped = _half(attr.t)
                overflow += clipped
                attr.t.CopyFrom(half)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    # Types inferred for float32 are stale now; shape inference rebuilds them when asked.
    del graph.value_info[:]

    float_inputs = [i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT]
    float_outputs = [o.name for o in graph.output
                     if o.type.tensor_type.elem_type == TensorProto.FLOAT and o.name not in float_inputs]
    renamed = {name: f"{name}.fp16" for name in float_inputs + float_outputs}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    casts_in = [helper.make_node("Cast", [name], [renamed[name]], to=TensorProto.FLOAT16, name=f"{name}/to_fp16")
                for name in float_inputs]
    casts_out = [helper.make_node("Cast", [renamed[name]], [name], to=TensorProto.FLOAT, name=f"{name}/to_fp32")
                 for name in float_outputs]
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    if overflow:
        out.metadata_props.add(key="fp16_clipped_values", value=str(overflow))
    try:
        onnx.checker.check_model(out, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise NinportError(f"the float16 copy of the model is not valid ONNX: {str(exc).splitlines()[0]}") from None
    return out
