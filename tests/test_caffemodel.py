"""Binary Caffe files: weights in every layout Caffe wrote, mean images, and clean errors for bad files.

Caffemodels here are mostly built message by message with ``caffe_pb2`` (not with ninport's writer), so the
reader is checked against the wire layout Caffe itself produces (src/caffe/proto/caffe.proto, BlobProto).
"""

from __future__ import annotations

import numpy as np
import pytest

from ninport.caffe import caffe_pb2
from ninport.caffe.caffemodel import read_binaryproto, read_caffemodel, write_binaryproto, write_caffemodel
from ninport.caffe.load import attach_weights, load_net, read_net
from ninport.caffe.seeded import write_seeded_caffemodel
from ninport.errors import ParseError, WeightsError

IP_NET = """
name: "ipnet"
input: "data"
input_shape { dim: 2 dim: 3 dim: 2 dim: 2 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 5 } }
"""


def _legacy_blob(array: np.ndarray, dims: tuple[int, int, int, int]) -> caffe_pb2.BlobProto:
    blob = caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
    blob.data.extend(array.ravel().tolist())
    return blob


def _shaped_blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())
    return blob


def _save(path, message: caffe_pb2.NetParameter):
    path.write_bytes(message.SerializeToString())
    return path


def test_v1_inner_product_weights_with_legacy_dims_load_as_out_by_in(tmp_path, write_prototxt):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((5, 12)).astype(np.float32)  # out x (C*H*W = 3*2*2)
    bias = rng.standard_normal(5).astype(np.float32)
    model = caffe_pb2.NetParameter()
    layer = model.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    # how V1 Caffe stored them: weights 1 x 1 x out x in, bias 1 x 1 x 1 x out
    layer.blobs.append(_legacy_blob(weight, (1, 1, 5, 12)))
    layer.blobs.append(_legacy_blob(bias, (1, 1, 1, 5)))
    net = attach_weights(read_net(write_prototxt(IP_NET)), _save(tmp_path / "ip.caffemodel", model))
    fc = net.layer("fc")
    assert [b.shape for b in fc.blobs] == [(5, 12), (5,)]
    assert np.array_equal(fc.blobs[0], weight) and np.array_equal(fc.blobs[1], bias)
    assert fc.blobs[0].dtype == np.float32 and fc.blobs[0].flags["C_CONTIGUOUS"]


def test_legacy_dims_that_do_not_pad_to_the_shape_are_rejected(tmp_path, write_prototxt):
    # Blob::ShapeEquals pads the expected shape with leading 1s; 1 x 5 x 1 x 12 is not 1 x 1 x 5 x 12.
    model = caffe_pb2.NetParameter()
    layer = model.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.blobs.append(_legacy_blob(np.zeros(60, np.float32), (1, 5, 1, 12)))
    layer.blobs.append(_legacy_blob(np.zeros(5, np.float32), (1, 1, 1, 5)))
    with pytest.raises(WeightsError, match=r"'fc'.*blob 0.*\[5, 12\].*\[1, 5, 1, 12\]"):
        attach_weights(read_net(write_prototxt(IP_NET)), _save(tmp_path / "ip.caffemodel", model))


def test_double_data_weights_become_float32(tmp_path, write_prototxt):
    model = caffe_pb2.NetParameter()
    layer = model.layer.add(name="fc", type="InnerProduct")
    weight = np.arange(60, dtype=np.float64).reshape(5, 12) / 7
    w = layer.blobs.add()
    w.shape.dim.extend([5, 12])
    w.double_data.extend(weight.ravel().tolist())
    layer.blobs.append(_shaped_blob(np.ones(5, np.float32)))
    net = attach_weights(read_net(write_prototxt(IP_NET)), _save(tmp_path / "d.caffemodel", model))
    assert net.layer("fc").blobs[0].dtype == np.float32
    assert np.array_equal(net.layer("fc").blobs[0], weight.astype(np.float32))


def test_v0_weights_inside_the_wrapped_layer(tmp_path, write_prototxt):
    text = (
        'input: "data"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 4\ninput_dim: 4\n'
        'layers { layer { name: "conv1" type: "conv" num_output: 3 kernelsize: 3 } bottom: "data" top: "conv1" }\n'
    )
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    model = caffe_pb2.NetParameter()
    wrapper = model.layers.add()
    wrapper.bottom.append("data")
    wrapper.top.append("conv1")
    wrapper.layer.name = "conv1"
    wrapper.layer.type = "conv"
    wrapper.layer.blobs.append(_legacy_blob(weight, (3, 2, 3, 3)))
    wrapper.layer.blobs.append(_legacy_blob(bias, (1, 1, 1, 3)))
    net = attach_weights(read_net(write_prototxt(text)), _save(tmp_path / "v0.caffemodel", model))
    assert np.array_equal(net.layer("conv1").blobs[0], weight)
    assert np.array_equal(net.layer("conv1").blobs[1], bias)


def test_layers_the_net_does_not_have_are_ignored(tmp_path, write_prototxt):
    # Net::CopyTrainedLayersFrom skips source layers the target net lacks
    model = caffe_pb2.NetParameter()
    extra = model.layer.add(name="old_fc", type="InnerProduct")
    extra.blobs.append(_shaped_blob(np.zeros((2, 2), np.float32)))
    fc = model.layer.add(name="fc", type="InnerProduct")
    fc.blobs.append(_shaped_blob(np.full((5, 12), 0.5, np.float32)))
    fc.blobs.append(_shaped_blob(np.zeros(5, np.float32)))
    net = attach_weights(read_net(write_prototxt(IP_NET)), _save(tmp_path / "x.caffemodel", model))
    assert float(net.layer("fc").blobs[0].sum()) == 30.0


def test_weights_of_a_different_net_name_layer_blob_and_both_shapes(tmp_path, write_prototxt, nin_weights_v1):
    text = (
        'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 32 dim: 32 }\n'
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
        "  convolution_param { num_output: 16 kernel_size: 11 stride: 4 } }\n"
    )
    path = write_prototxt(text)
    with pytest.raises(WeightsError) as info:
        attach_weights(read_net(path), nin_weights_v1)
    message = str(info.value)
    assert "'conv1'" in message and f"{path}:3" in message
    assert "blob 0" in message
    assert "[16, 3, 11, 11]" in message and "[96, 3, 11, 11]" in message


def test_missing_and_miscounted_blobs(tmp_path, write_prototxt):
    path = write_prototxt(IP_NET)
    model = caffe_pb2.NetParameter()
    model.layer.add(name="other", type="ReLU")
    with pytest.raises(WeightsError, match="'fc'.*no weights"):
        attach_weights(read_net(path), _save(tmp_path / "none.caffemodel", model))
    model = caffe_pb2.NetParameter()
    model.layer.add(name="fc", type="InnerProduct").blobs.append(_shaped_blob(np.zeros((5, 12), np.float32)))
    with pytest.raises(WeightsError, match=r"'fc'.*2 blob\(s\).*has 1"):
        attach_weights(read_net(path), _save(tmp_path / "one.caffemodel", model))


def test_blob_whose_dims_disagree_with_its_values(tmp_path, write_prototxt):
    model = caffe_pb2.NetParameter()
    fc = model.layer.add(name="fc", type="InnerProduct")
    bad = fc.blobs.add()
    bad.shape.dim.extend([5, 12])
    bad.data.extend([0.0] * 59)
    fc.blobs.append(_shaped_blob(np.zeros(5, np.float32)))
    with pytest.raises(WeightsError, match=r"'fc'.*blob 0.*59 values"):
        attach_weights(read_net(write_prototxt(IP_NET)), _save(tmp_path / "bad.caffemodel", model))


# ---------------------------------------------------------------------------------------------------------
# Files that are not caffemodels


def test_truncated_caffemodel(tmp_path, nin_prototxt, nin_weights_v2):
    data = nin_weights_v2.read_bytes()
    path = tmp_path / "half.caffemodel"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ParseError, match=f"^{path}: .*(truncated|corrupt)"):
        read_caffemodel(path)
    with pytest.raises(ParseError):
        load_net(nin_prototxt, path)


def test_random_bytes_as_caffemodel(tmp_path):
    path = tmp_path / "noise.caffemodel"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ParseError, match=f"^{path}: not a valid caffemodel"):
        read_caffemodel(path)


def test_text_and_empty_files_as_caffemodel(tmp_path, nin_prototxt):
    with pytest.raises(ParseError, match="caffemodel"):
        read_caffemodel(nin_prototxt)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(ParseError, match="empty"):
        read_caffemodel(empty)
    with pytest.raises(ParseError, match="no such file"):
        read_caffemodel(tmp_path / "nope.caffemodel")


def test_write_caffemodel_layouts(tmp_path):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    for layout in ("v1", "v2"):
        path = tmp_path / f"{layout}.caffemodel"
        write_caffemodel(path, [("fc", "InnerProduct", [weight])], layout=layout, name="n")
        message = caffe_pb2.NetParameter()
        message.ParseFromString(path.read_bytes())
        if layout == "v1":
            layer = message.layers[0]
            assert layer.type == caffe_pb2.V1LayerParameter.INNER_PRODUCT
            blob = layer.blobs[0]
            assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 2, 3)
        else:
            layer = message.layer[0]
            assert layer.type == "InnerProduct"
            assert list(layer.blobs[0].shape.dim) == [2, 3]
        assert list(layer.blobs[0].data) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="no V1 enum"):
        write_caffemodel(tmp_path / "x.caffemodel", [("bn", "BatchNorm", [weight])], layout="v1")


# ---------------------------------------------------------------------------------------------------------
# Mean images (.binaryproto)


def test_binaryproto_legacy_layout(tmp_path):
    mean = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    path = tmp_path / "mean.binaryproto"
    write_binaryproto(path, mean)  # legacy, as compute_image_mean writes it: 1 x C x H x W
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(path.read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5) and not blob.HasField("shape")
    back = read_binaryproto(path)
    assert back.shape == (1, 3, 4, 5) and back.dtype == np.float32
    assert np.array_equal(back[0], mean)


def test_binaryproto_shape_layout(tmp_path):
    mean = np.linspace(0, 1, 3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    path = tmp_path / "mean.binaryproto"
    write_binaryproto(path, mean, legacy=False)
    back = read_binaryproto(path)
    assert back.shape == (3, 2, 2)
    assert np.array_equal(back, mean)


def test_binaryproto_written_by_hand_with_double_data(tmp_path):
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=1, width=3)
    blob.double_data.extend([104.0, 117.0, 123.0])
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    back = read_binaryproto(path)
    assert back.dtype == np.float64 and back.ravel().tolist() == [104.0, 117.0, 123.0]


def test_bad_binaryproto(tmp_path):
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    blob.data.extend([1.0] * 11)
    path = tmp_path / "short.binaryproto"
    path.write_bytes(blob.SerializeToString())
    with pytest.raises(ParseError, match=f"^{path}: .*12.*11|^{path}: .*11"):
        read_binaryproto(path)
    empty = tmp_path / "empty.binaryproto"
    empty.write_bytes(b"")
    with pytest.raises(ParseError, match="no values"):
        read_binaryproto(empty)
    garbage = tmp_path / "garbage.binaryproto"
    garbage.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ParseError, match="binaryproto"):
        read_binaryproto(garbage)


# ---------------------------------------------------------------------------------------------------------
# Large files: Caffe's C++ reader needed SetTotalBytesLimit to pass 64 MB; ours must simply work.

BIG_NET = """
name: "big"
input: "data"
input_shape { dim: 1 dim: 4500 }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4096 } }
"""


@pytest.fixture(scope="session")
def big_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("big")
    prototxt = directory / "big.prototxt"
    prototxt.write_text(BIG_NET)
    caffemodel = directory / "big.caffemodel"
    seeded = write_seeded_caffemodel(read_net(prototxt), caffemodel, layout="v2", seed=3)
    return prototxt, caffemodel, seeded


def test_caffemodel_over_64_mb_loads(big_model):
    prototxt, caffemodel, seeded = big_model
    assert caffemodel.stat().st_size > 64 * 2**20  # 4096 * 4500 floats = 73.7 MB
    net, shapes = load_net(prototxt, caffemodel)
    weight, bias = net.layer("fc").blobs
    assert weight.shape == (4096, 4500) and bias.shape == (4096,)
    assert np.array_equal(weight, seeded.layer("fc").blobs[0])
    assert np.array_equal(bias, seeded.layer("fc").blobs[1])
    assert shapes.params() == 4096 * 4500 + 4096
