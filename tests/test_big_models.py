"""The memory path of ``ninport convert`` for big models: weights copied once (aligned, sharing memory with
the module), and the streamed ONNX export checked against the regular one on the NiN gist net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ninport.caffe.load import attach_weights, read_net
from ninport.caffe.shapes import infer_shapes
from ninport.caffe.wire import read_weights


@pytest.fixture(scope="module")
def nin_module(nin_prototxt: Path, nin_weights_v2: Path):
    from ninport.torch.build import build_module

    net = read_net(nin_prototxt)
    shapes = infer_shapes(net)
    attach_weights(net, nin_weights_v2, shapes)
    return net, build_module(net, shapes)


def test_parameters_are_the_caffemodel_values_in_one_aligned_copy(nin_module, nin_weights_v2: Path) -> None:
    net, module = nin_module
    before = nin_weights_v2.read_bytes()
    found = read_weights(nin_weights_v2)  # an independent read of the file
    state = module.state_dict()
    for layer in net.layers:
        for index, blob in enumerate(layer.blobs):
            name = f"{layer.name}.{'weight' if index == 0 else 'bias'}"
            tensor = state[name]
            assert tensor.data_ptr() == blob.ctypes.data  # the parameter is the net's blob: one copy
            assert tensor.data_ptr() % 4 == 0
            expected = found[layer.name][index].to_array().reshape(tensor.shape)
            np.testing.assert_array_equal(tensor.numpy(), expected)
    # Writing to a parameter (training does) changes neither the file nor a fresh read of it.
    first = next(iter(module.parameters()))
    first.data.mul_(2.0)
    assert nin_weights_v2.read_bytes() == before
    first.data.mul_(0.5)


def test_streamed_export_is_the_regular_export(nin_module, tmp_path: Path, monkeypatch) -> None:
    import ninport.onnx.export as export

    _, module = nin_module
    regular = export.to_onnx_model(module, batch=1)
    graph, weights = export.export_graph(module, batch=1, weights_apart=True)
    path = tmp_path / "streamed.onnx"
    size = export.write_streamed(path, graph, weights)
    assert size == path.stat().st_size
    streamed = onnx.load(str(path))
    onnx.checker.check_model(streamed, full_check=True)

    def nodes(model):
        return [(n.op_type, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
                for n in model.graph.node]

    assert nodes(streamed) == nodes(regular)
    assert [i.name for i in streamed.graph.input] == [i.name for i in regular.graph.input]
    assert [o.SerializeToString() for o in streamed.graph.output] == \
        [o.SerializeToString() for o in regular.graph.output]
    ours = {i.name: numpy_helper.to_array(i) for i in streamed.graph.initializer}
    theirs = {i.name: numpy_helper.to_array(i) for i in regular.graph.initializer}
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype
        np.testing.assert_array_equal(ours[name], value)
    # ``start_export`` takes the streamed path past the threshold and proves the file as before.
    monkeypatch.setattr(export, "STREAMED_EXPORT_BYTES", 0)
    result = export.export_onnx(module, tmp_path / "via_start.onnx")
    assert result.parity and all(p.rel <= 1e-5 for p in result.parity)
    reloaded = onnx.load(str(tmp_path / "via_start.onnx"))
    assert {i.name for i in reloaded.graph.initializer} == set(theirs)


def test_streamed_export_failure_leaves_no_file(nin_module, tmp_path: Path, monkeypatch) -> None:
    import ninport.onnx.export as export
    from ninport.errors import ParityError

    _, module = nin_module
    monkeypatch.setattr(export, "STREAMED_EXPORT_BYTES", 0)
    target = tmp_path / "bad.onnx"
    monkeypatch.setattr("ninport.parity.tolerance", lambda floor, rtol=1e-5: -1.0)  # no result can pass
    with pytest.raises(ParityError):
        export.export_onnx(module, target)
    assert not target.exists()
    assert not list(tmp_path.iterdir())
