"""Every vintage of Caffe net definition gives one normalized ``Net``: V0, V1 and V2 text, net inputs, phase
rules, the deploy view of a train_val file, and the renaming of in-place blobs.

Expected behaviour follows BVLC Caffe: src/caffe/util/upgrade_proto.cpp (V0/V1 upgrades, UpgradeNetInput),
src/caffe/net.cpp (FilterNet, StateMeetsRule), src/caffe/layers/input_layer.cpp.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ninport.caffe import caffe_pb2
from ninport.caffe.load import attach_weights, read_net
from ninport.caffe.shapes import infer_shapes
from ninport.errors import NetError

NIN_LAYERS = [
    # (name, type, bottom, top) in the order the gist lists them, Caffe's own blob names
    ("conv1", "Convolution", "data", "conv1"),
    ("relu0", "ReLU", "conv1", "conv1"),
    ("cccp1", "Convolution", "conv1", "cccp1"),
    ("relu1", "ReLU", "cccp1", "cccp1"),
    ("cccp2", "Convolution", "cccp1", "cccp2"),
    ("relu2", "ReLU", "cccp2", "cccp2"),
    ("pool0", "Pooling", "cccp2", "pool0"),
    ("conv2", "Convolution", "pool0", "conv2"),
    ("relu3", "ReLU", "conv2", "conv2"),
    ("cccp3", "Convolution", "conv2", "cccp3"),
    ("relu5", "ReLU", "cccp3", "cccp3"),
    ("cccp4", "Convolution", "cccp3", "cccp4"),
    ("relu6", "ReLU", "cccp4", "cccp4"),
    ("pool2", "Pooling", "cccp4", "pool2"),
    ("conv3", "Convolution", "pool2", "conv3"),
    ("relu7", "ReLU", "conv3", "conv3"),
    ("cccp5", "Convolution", "conv3", "cccp5"),
    ("relu8", "ReLU", "cccp5", "cccp5"),
    ("cccp6", "Convolution", "cccp5", "cccp6"),
    ("relu9", "ReLU", "cccp6", "cccp6"),
    ("pool3", "Pooling", "cccp6", "pool3"),
    ("drop", "Dropout", "pool3", "pool3"),
    ("conv4-1024", "Convolution", "pool3", "conv4"),
    ("relu10", "ReLU", "conv4", "conv4"),
    ("cccp7-1024", "Convolution", "conv4", "cccp7"),
    ("relu11", "ReLU", "cccp7", "cccp7"),
    ("cccp8-1024", "Convolution", "cccp7", "cccp8"),
    ("relu12", "ReLU", "cccp8", "cccp8"),
    ("pool4", "Pooling", "cccp8", "pool4"),
]


# ---------------------------------------------------------------------------------------------------------
# The gist's net


def test_nin_test_phase_layers_in_caffe_names(nin_prototxt):
    net = read_net(nin_prototxt)
    assert net.phase == "TEST"
    assert [(x.name, x.type) for x in net.layers] == [("data", "Input")] + [(n, t) for n, t, _, _ in NIN_LAYERS]
    caffe_view = [(x.name, x.type, x.caffe_bottoms, x.caffe_tops) for x in net.layers[1:]]
    assert caffe_view == [(n, t, [b], [o]) for n, t, b, o in NIN_LAYERS]
    assert net.outputs == ["pool4"]


@pytest.mark.parametrize(("phase", "batch", "mirror"), [("TEST", 89, False), ("TRAIN", 64, True)])
def test_nin_phase_picks_its_data_layer(nin_prototxt, phase, batch, mirror):
    net = read_net(nin_prototxt, phase=phase)
    # the TEST data layer has batch_size 89, the TRAIN one 64; both crop 224 (gist train_val.prototxt)
    assert net.inputs == {"data": (batch, 3, 224, 224)}
    assert net.preprocess["crop_size"] == 224
    assert net.preprocess["mean_file"] == "/home/linmin/IMAGENET-LMDB/imagenet-train-mean"
    assert net.preprocess.get("mirror", False) is mirror
    # label, accuracy (TEST) and loss (TRAIN) are gone from the deploy view; pool4 is the output either way
    names = [x.name for x in net.layers]
    assert "accuracy" not in names and "loss" not in names
    assert "label" not in {b for x in net.layers for b in x.bottoms + x.tops}
    assert net.outputs == ["pool4"]


def test_phase_name_is_checked(nin_prototxt):
    assert read_net(nin_prototxt, phase="train").phase == "TRAIN"
    with pytest.raises(NetError, match="TEST or TRAIN"):
        read_net(nin_prototxt, phase="deploy")


def test_input_shape_overrides_the_data_layer(nin_prototxt):
    net = read_net(nin_prototxt, input_shape="1,3,227,227")
    assert net.inputs == {"data": (1, 3, 227, 227)}
    assert read_net(nin_prototxt, input_shape="data=2,3,224,224").inputs == {"data": (2, 3, 224, 224)}
    with pytest.raises(NetError, match="label2"):
        read_net(nin_prototxt, input_shape="label2=1,2")
    with pytest.raises(NetError, match="--input-shape"):
        read_net(nin_prototxt, input_shape="1,3,two")


# ---------------------------------------------------------------------------------------------------------
# In-place normalization


def test_every_blob_version_has_one_writer_and_the_last_keeps_caffes_name(nin_prototxt):
    net = read_net(nin_prototxt)
    tops = [t for x in net.layers for t in x.tops]
    assert len(tops) == len(set(tops))
    # The last writer of each Caffe blob keeps the Caffe name: the value pycaffe's net.blobs holds.
    assert net.layer("relu0").tops == ["conv1"]
    assert net.layer("conv1").tops != ["conv1"]
    assert net.layer("relu0").bottoms == net.layer("conv1").tops
    assert net.layer("cccp1").bottoms == ["conv1"]
    assert net.layer("drop").tops == ["pool3"]
    assert net.layer("conv4-1024").bottoms == ["pool3"]
    assert net.layer("drop").bottoms == net.layer("pool3").tops
    for layer in net.layers:
        assert net.caffe_name(layer.tops[0]) == layer.caffe_tops[0]
        assert list(layer.param.top) == layer.tops and list(layer.param.bottom) == layer.bottoms
    # every bottom is written earlier, by exactly one layer
    written: set[str] = set()
    for layer in net.layers:
        assert set(layer.bottoms) <= written
        written.update(layer.tops)


def test_three_in_place_writers_chain(write_prototxt):
    text = (
        'input: "in"\ninput_shape { dim: 1 dim: 2 }\n'
        'layer { name: "p" type: "Power" bottom: "in" top: "x" }\n'
        'layer { name: "a" type: "ReLU" bottom: "x" top: "x" }\n'
        'layer { name: "b" type: "TanH" bottom: "x" top: "x" }\n'
        'layer { name: "c" type: "Sigmoid" bottom: "x" top: "x" }\n'
        'layer { name: "d" type: "Softmax" bottom: "x" top: "y" }\n'
    )
    net = read_net(write_prototxt(text))
    chain = [(x.name, x.bottoms, x.tops) for x in net.layers]
    tops = [t for _, _, ts in chain for t in ts]
    assert len(tops) == len(set(tops)) == 6
    assert chain[4][2] == ["x"]  # c is the last writer of x
    for (_, _, prev_tops), (_, bottoms, _) in zip(chain, chain[1:]):
        assert bottoms == prev_tops
    assert [x.caffe_tops for x in net.layers] == [["in"], ["x"], ["x"], ["x"], ["x"], ["y"]]
    assert net.outputs == ["y"]


def test_in_place_layer_on_the_net_input_keeps_the_input_name(write_prototxt):
    # The input blob is what the user feeds: it keeps its Caffe name, and later in-place versions get
    # blob@layer names, so every net input is the top of an Input layer.
    text = (
        'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
        'layer { name: "scale" type: "Power" bottom: "data" top: "data" power_param { scale: 2 } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        "convolution_param { num_output: 2 kernel_size: 1 } }\n"
    )
    net = read_net(write_prototxt(text))
    input_tops = {t for x in net.layers if x.type == "Input" for t in x.tops}
    assert set(net.inputs) == input_tops == {"data"}
    tops = [t for x in net.layers for t in x.tops]
    assert len(tops) == len(set(tops))
    assert net.layer("scale").bottoms == ["data"]
    assert net.layer("relu").bottoms == net.layer("scale").tops != ["data"]
    assert net.layer("conv").bottoms == net.layer("relu").tops != ["data"]
    assert [net.caffe_name(t) for t in tops] == ["data", "data", "data", "conv"]
    assert infer_shapes(net).blobs[net.layer("conv").bottoms[0]] == (1, 3, 4, 4)


# ---------------------------------------------------------------------------------------------------------
# V1 text, V2 text and weights in either layout: one net


def _normalized(net):
    return [(x.name, x.type, x.bottoms, x.tops, x.param) for x in net.layers]


def test_v2_text_gives_the_same_net_as_v1(nin_prototxt, nin_v2_prototxt):
    for phase in ("TEST", "TRAIN"):
        v1, v2 = read_net(nin_prototxt, phase=phase), read_net(nin_v2_prototxt, phase=phase)
        assert _normalized(v1) == _normalized(v2)
        assert v1.inputs == v2.inputs and v1.preprocess == v2.preprocess
        # the line numbers differ between the files, but in each file they point at the layer's own block
        for path, net in ((nin_prototxt, v1), (nin_v2_prototxt, v2)):
            lines = path.read_text().splitlines()
            for layer in net.layers:
                assert lines[layer.line - 1].startswith(("layer {", "layers {"))
                first_name = next(x.strip() for x in lines[layer.line - 1 :] if x.strip().startswith("name:"))
                assert first_name == f'name: "{layer.name}"'


def test_v1_parameters_become_v2_param_specs(nin_prototxt):
    conv1 = read_net(nin_prototxt).layer("conv1").param
    # blobs_lr: 1, 2 and weight_decay: 1, 0 in the gist
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1.0, 1.0), (2.0, 0.0)]
    p = conv1.convolution_param
    assert (p.num_output, list(p.kernel_size), list(p.stride)) == (96, [11], [4])
    assert p.weight_filler.type == "gaussian" and p.weight_filler.std == pytest.approx(0.01)
    assert read_net(nin_prototxt).layer("pool4").param.pooling_param.pool == caffe_pb2.PoolingParameter.AVE


@pytest.mark.parametrize(("proto", "weights"), list(itertools.product(["v1", "v2"], ["v1", "v2"])))
def test_text_and_weight_layouts_give_identical_nets(
    nin_prototxt, nin_v2_prototxt, nin_weights_v1, nin_weights_v2, proto, weights
):
    reference = attach_weights(read_net(nin_prototxt), nin_weights_v1)
    path = nin_prototxt if proto == "v1" else nin_v2_prototxt
    net = attach_weights(read_net(path), nin_weights_v1 if weights == "v1" else nin_weights_v2)
    assert _normalized(net) == _normalized(reference)
    assert net.param_count() == 7_595_176
    for a, b in zip(net.layers, reference.layers):
        assert len(a.blobs) == len(b.blobs)
        for x, y in zip(a.blobs, b.blobs):
            assert x.dtype == np.float32 and x.shape == y.shape
            assert np.array_equal(x, y)


def test_weight_layouts_differ_on_disk(nin_weights_v1, nin_weights_v2):
    """The two fixtures really are the two layouts: V1 layers with 4-D legacy dims, V2 layers with shapes."""
    v1, v2 = caffe_pb2.NetParameter(), caffe_pb2.NetParameter()
    v1.ParseFromString(nin_weights_v1.read_bytes())
    v2.ParseFromString(nin_weights_v2.read_bytes())
    assert len(v1.layer) == 0 and len(v1.layers) == 12
    assert len(v2.layers) == 0 and len(v2.layer) == 12
    bias = v1.layers[0].blobs[1]
    assert not bias.HasField("shape") and (bias.num, bias.channels, bias.height, bias.width) == (1, 1, 1, 96)
    assert list(v2.layer[0].blobs[1].shape.dim) == [96]


def test_deploy_file_matches_the_train_val_view(nin_prototxt, nin_deploy_prototxt):
    deploy = read_net(nin_deploy_prototxt)
    train_val = read_net(nin_prototxt, input_shape="1,3,224,224")
    assert deploy.inputs == train_val.inputs == {"data": (1, 3, 224, 224)}
    assert deploy.layers[0].type == "Input"
    assert _normalized(deploy)[1:] == _normalized(train_val)[1:]
    assert deploy.preprocess == {}


DATA_LAYERS = {
    # data layer text -> the input it stands for in the deploy view
    'layer { name: "d" type: "ImageData" top: "data" top: "label"\n'
    '  image_data_param { source: "list.txt" batch_size: 8 new_height: 256 new_width: 200 is_color: false } }\n':
        (8, 1, 256, 200),
    'layer { name: "d" type: "ImageData" top: "data" top: "label" transform_param { crop_size: 227 }\n'
    '  image_data_param { source: "list.txt" batch_size: 8 new_height: 256 new_width: 256 } }\n':
        (8, 3, 227, 227),
    'layer { name: "d" type: "MemoryData" top: "data" top: "label"\n'
    "  memory_data_param { batch_size: 2 channels: 1 height: 28 width: 28 } }\n":
        (2, 1, 28, 28),
    'layer { name: "d" type: "DummyData" top: "data" top: "label"\n'
    "  dummy_data_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 } } }\n":
        (2, 3, 5, 5),
    'layer { name: "d" type: "DummyData" top: "data" dummy_data_param { num: 2 channels: 3 height: 5 width: 6 } }\n':
        (2, 3, 5, 6),
}
LOSS = (
    'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "r" bottom: "label" top: "loss" }\n'
)


@pytest.mark.parametrize("data_layer", list(DATA_LAYERS))
def test_data_layers_become_one_input(write_prototxt, data_layer):
    text = data_layer + (LOSS if "label" in data_layer else LOSS.splitlines(keepends=True)[0])
    net = read_net(write_prototxt(text))
    assert net.inputs == {"data": DATA_LAYERS[data_layer]}
    assert [(x.name, x.type, x.tops) for x in net.layers] == [("d", "Input", ["data"]), ("r", "ReLU", ["r"])]
    assert net.outputs == ["r"]


def test_data_layer_without_size_needs_input_shape(write_prototxt):
    text = (
        'layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 64 }\n'
        "  transform_param { scale: 0.00390625 } }\n" + LOSS
    )
    path = write_prototxt(text)
    with pytest.raises(NetError, match=rf"{path}:1: .*'d'.*--input-shape"):
        read_net(path)
    net = read_net(path, input_shape="1,1,28,28")
    assert net.inputs == {"data": (1, 1, 28, 28)}
    assert net.preprocess == {"scale": 0.00390625}


def test_separate_label_data_layer_is_no_input(write_prototxt):
    # Segmentation nets (e.g. FCN) read labels from their own data layer; only the loss reads them, so the
    # deploy view has one input and does not need to know the label layer's shape.
    text = (
        'layer { name: "data" type: "Data" top: "data" data_param { source: "img" batch_size: 1 }\n'
        "  transform_param { crop_size: 64 mean_value: 104 mean_value: 117 mean_value: 123 } }\n"
        'layer { name: "label" type: "Data" top: "label" data_param { source: "lbl" batch_size: 1 } }\n'
        + LOSS
    )
    net = read_net(write_prototxt(text))
    assert net.inputs == {"data": (1, 3, 64, 64)}
    assert [x.name for x in net.layers] == ["data", "r"]
    assert net.preprocess == {"crop_size": 64, "mean_value": [104.0, 117.0, 123.0]}


# ---------------------------------------------------------------------------------------------------------
# V0


V0_NET = """
name: "v0net"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 8
input_dim: 8
layers {
  layer { name: "pad1" type: "padding" pad: 2 }
  bottom: "data"
  top: "pad1"
}
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1 blobs_lr: 1 blobs_lr: 2 }
  bottom: "pad1"
  top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers {
  layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 }
  bottom: "conv1"
  top: "pool1"
}
layers {
  layer { name: "conv2" type: "conv" num_output: 6 kernelsize: 2 group: 2 biasterm: false }
  bottom: "pool1"
  top: "conv2"
}
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.25 } bottom: "conv2" top: "conv2" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 } bottom: "conv2" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""


def test_v0_net_upgrades_like_caffe(write_prototxt):
    net = read_net(write_prototxt(V0_NET))
    assert net.name == "v0net"
    assert net.inputs == {"data": (1, 3, 8, 8)}
    assert [(x.name, x.type) for x in net.layers] == [
        ("input", "Input"),
        ("conv1", "Convolution"),  # the padding layer is folded into conv1 (UpgradeV0PaddingLayers)
        ("relu1", "ReLU"),
        ("pool1", "Pooling"),
        ("conv2", "Convolution"),
        ("drop", "Dropout"),
        ("fc", "InnerProduct"),
        ("prob", "Softmax"),
    ]
    conv1 = net.layer("conv1")
    assert conv1.caffe_bottoms == ["data"]
    p = conv1.param.convolution_param
    assert (p.num_output, list(p.kernel_size), list(p.stride), list(p.pad), p.bias_term) == (4, [3], [1], [2], True)
    assert [x.lr_mult for x in conv1.param.param] == [1.0, 2.0]
    pool = net.layer("pool1").param.pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (caffe_pb2.PoolingParameter.AVE, 3, 2)
    conv2 = net.layer("conv2").param.convolution_param
    assert (conv2.num_output, conv2.group, conv2.bias_term) == (6, 2, False)
    assert net.layer("drop").param.dropout_param.dropout_ratio == pytest.approx(0.25)
    assert net.layer("fc").param.inner_product_param.num_output == 5

    shapes = infer_shapes(net)
    # conv1: (8 + 2*2 - 3) / 1 + 1 = 10; pool1: ceil((10 - 3) / 2) + 1 = 5; conv2: 5 - 2 + 1 = 4
    assert shapes.blobs[conv1.tops[0]] == (1, 4, 10, 10)
    assert shapes.blobs["pool1"] == (1, 4, 5, 5)
    assert shapes.blobs["conv2"] == (1, 6, 4, 4)
    assert shapes.blobs["prob"] == (1, 5)
    assert shapes.layers["conv2"].params == [(6, 2, 2, 2)]  # no bias: biasterm false
    assert shapes.layers["fc"].params == [(5, 96), (5,)]


def test_v0_padding_before_pooling(write_prototxt):
    text = (
        'input: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 5\ninput_dim: 5\n'
        'layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "padded" }\n'
        'layers { layer { name: "pool" type: "pool" pool: MAX kernelsize: 2 stride: 2 } bottom: "padded" top: "p" }\n'
    )
    net = read_net(write_prototxt(text))
    assert [x.name for x in net.layers] == ["input", "pool"]
    assert net.layer("pool").bottoms == ["data"]
    assert net.layer("pool").param.pooling_param.pad == 1
    # ceil((5 + 2 - 2) / 2) + 1 = 4, and (4 - 1) * 2 >= 5 + 1 drops the last window: 3 (pooling_layer.cpp)
    assert infer_shapes(net).blobs["p"] == (1, 1, 3, 3)


def test_v0_padding_into_other_layer_is_an_error(write_prototxt):
    text = (
        'input: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 5\ninput_dim: 5\n'
        'layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "data" top: "padded" }\n'
        'layers { layer { name: "r" type: "relu" } bottom: "padded" top: "r" }\n'
    )
    with pytest.raises(NetError, match="pad"):
        read_net(write_prototxt(text))


def test_v0_unknown_type_is_an_error(write_prototxt):
    text = 'input: "d"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 1\ninput_dim: 1\n' + (
        'layers { layer { name: "w" type: "warp" } bottom: "d" top: "w" }\n'
    )
    path = write_prototxt(text)
    with pytest.raises(NetError, match=rf"{path}:6: .*'w'.*warp"):
        read_net(path)


def test_v0_data_layer_moves_transform_fields(write_prototxt):
    text = (
        'layers { layer { name: "data" type: "data" source: "db" batchsize: 16 cropsize: 32 meanfile: "m.binaryproto"'
        " scale: 0.5 mirror: true } top: \"data\" top: \"label\" }\n"
        'layers { layer { name: "conv" type: "conv" num_output: 2 kernelsize: 3 } bottom: "data" top: "conv" }\n'
    )
    net = read_net(write_prototxt(text))
    assert net.inputs == {"data": (16, 3, 32, 32)}
    assert net.preprocess == {"crop_size": 32, "mean_file": "m.binaryproto", "scale": 0.5, "mirror": True}


# ---------------------------------------------------------------------------------------------------------
# Net inputs


INPUT_FORMS = {
    "input_dim": 'input: "data"\ninput_dim: 2\ninput_dim: 3\ninput_dim: 5\ninput_dim: 7\n',
    "input_shape": 'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 5 dim: 7 }\n',
    "Input layer": 'layer { name: "data" type: "Input" top: "data"\n'
    "  input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }\n",
}
BODY = (
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
    "  convolution_param { num_output: 4 kernel_size: 3 } }\n"
)


@pytest.mark.parametrize("form", list(INPUT_FORMS))
def test_three_ways_to_declare_the_input(write_prototxt, form):
    net = read_net(write_prototxt(INPUT_FORMS[form] + BODY))
    assert net.inputs == {"data": (2, 3, 5, 7)}
    assert net.layers[0].type == "Input" and net.layers[0].tops == ["data"]
    assert [list(s.dim) for s in net.layers[0].param.input_param.shape] == [[2, 3, 5, 7]]
    assert infer_shapes(net).blobs["conv"] == (2, 4, 3, 5)


def test_two_net_level_inputs(write_prototxt):
    text = (
        'input: "a"\ninput: "b"\n'
        "input_dim: 1\ninput_dim: 2\ninput_dim: 3\ninput_dim: 4\n"
        "input_dim: 1\ninput_dim: 2\ninput_dim: 5\ninput_dim: 4\n"
        'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" concat_param { axis: 2 } }\n'
    )
    net = read_net(write_prototxt(text))
    assert net.inputs == {"a": (1, 2, 3, 4), "b": (1, 2, 5, 4)}
    assert infer_shapes(net).blobs["c"] == (1, 2, 8, 4)
    two_shapes = text.replace("input_dim: 1\ninput_dim: 2\ninput_dim: 5\ninput_dim: 4\n", "")
    with pytest.raises(NetError, match="input_dim"):
        read_net(write_prototxt(two_shapes, "bad.prototxt"))


def test_input_layer_one_shape_for_every_top(write_prototxt):
    # input_layer.cpp: 'shape' given once applies to every top
    text = 'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 4 } } }\n'
    assert read_net(write_prototxt(text)).inputs == {"a": (1, 4), "b": (1, 4)}


def test_input_layer_with_wrong_shape_count_is_an_error(write_prototxt):
    # input_layer.cpp: "Must specify 'shape' once, once per top blob, or not at all"
    text = (
        'layer { name: "in" type: "Input" top: "a" top: "b" top: "c"\n'
        "  input_param { shape { dim: 1 } shape { dim: 2 } } }\n"
    )
    with pytest.raises(NetError, match=r"net.prototxt:1: Input layer 'in' has 3 tops but 2 shapes"):
        read_net(write_prototxt(text))


def test_input_dim_without_input_is_an_error(write_prototxt):
    with pytest.raises(NetError, match="input"):
        read_net(write_prototxt("input_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n" + BODY))


# ---------------------------------------------------------------------------------------------------------
# Phase rules (net.cpp: FilterNet, StateMeetsRule)


def _rules_net(rules: dict[str, str], state: str = "") -> str:
    """A net whose layers are in-place ReLUs on 'data', each with the given rule text."""
    text = state + 'input: "data"\ninput_shape { dim: 1 dim: 2 }\n'
    for name, rule in rules.items():
        text += f'layer {{ name: "{name}" type: "ReLU" bottom: "data" top: "data" {rule} }}\n'
    return text


RULES = {
    "always": "",
    "train_only": "include { phase: TRAIN }",
    "test_only": "include { phase: TEST }",
    "not_test": "exclude { phase: TEST }",
    "stage_a": 'include { stage: "a" }',
    "stage_a_and_b": 'include { stage: "a" stage: "b" }',
    "stage_a_or_b": 'include { stage: "a" } include { stage: "b" }',
    "not_stage_a": 'include { not_stage: "a" }',
    "level_ge_1": "include { min_level: 1 }",
    "level_le_1": "include { max_level: 1 }",
    "test_level_2": "include { phase: TEST min_level: 2 max_level: 2 }",
    "exclude_stage_b": 'exclude { stage: "b" }',
}


@pytest.mark.parametrize(
    ("phase", "level", "stages", "expected"),
    [
        ("TEST", 0, [], ["always", "test_only", "not_stage_a", "level_le_1", "exclude_stage_b"]),
        ("TRAIN", 0, [], ["always", "train_only", "not_test", "not_stage_a", "level_le_1", "exclude_stage_b"]),
        ("TEST", 0, ["a"], ["always", "test_only", "stage_a", "stage_a_or_b", "level_le_1", "exclude_stage_b"]),
        ("TEST", 0, ["b"], ["always", "test_only", "stage_a_or_b", "not_stage_a", "level_le_1"]),
        ("TEST", 0, ["a", "b"], ["always", "test_only", "stage_a", "stage_a_and_b", "stage_a_or_b", "level_le_1"]),
        ("TEST", 1, [], ["always", "test_only", "not_stage_a", "level_ge_1", "level_le_1", "exclude_stage_b"]),
        ("TEST", 2, [], ["always", "test_only", "not_stage_a", "level_ge_1", "test_level_2", "exclude_stage_b"]),
        ("TRAIN", 2, [], ["always", "train_only", "not_test", "not_stage_a", "level_ge_1", "exclude_stage_b"]),
    ],
)
def test_phase_level_and_stage_rules(write_prototxt, phase, level, stages, expected):
    net = read_net(write_prototxt(_rules_net(RULES)), phase=phase, level=level, stages=stages)
    assert [x.name for x in net.layers[1:]] == expected


def test_net_state_in_the_file_gives_level_and_stages(write_prototxt):
    text = _rules_net(RULES, state='state { level: 2 stage: "a" }\n')
    net = read_net(write_prototxt(text))
    assert [x.name for x in net.layers[1:]] == [
        "always", "test_only", "stage_a", "stage_a_or_b", "level_ge_1", "test_level_2", "exclude_stage_b",
    ]


def test_include_and_exclude_together_is_an_error(write_prototxt):
    path = write_prototxt(_rules_net({"both": "include { phase: TEST } exclude { stage: 'x' }"}))
    with pytest.raises(NetError, match=rf"{path}:3: .*'both'"):
        read_net(path)


def test_same_name_in_both_phases_is_fine_and_twice_in_one_as_in_caffe(write_prototxt):
    ok = _rules_net({"x": "include { phase: TRAIN }"}) + (
        'layer { name: "x" type: "ReLU" bottom: "data" top: "data" include { phase: TEST } }\n'
    )
    assert [x.name for x in read_net(write_prototxt(ok)).layers] == ["input", "x"]
    # Caffe never checks names for uniqueness: the repeat is kept under a derived name (tests/test_leniency.py).
    twice = _rules_net({"x": ""}) + 'layer { name: "x" type: "ReLU" bottom: "data" top: "data" }\n'
    net = read_net(write_prototxt(twice, "twice.prototxt"))
    assert [(x.name, x.caffe_name) for x in net.layers[1:]] == [("x", "x"), ("x#2", "x")]


# ---------------------------------------------------------------------------------------------------------
# Broken graphs


def test_bottom_nobody_produces_names_layer_blob_and_line(write_prototxt):
    text = (
        'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        "convolution_param { num_output: 4 kernel_size: 3 } }\n"
        'layer { name: "relu1" type: "ReLU" bottom: "conv_1" top: "conv1" }\n'
    )
    path = write_prototxt(text)
    with pytest.raises(NetError, match=rf"^{path}:4: layer 'relu1' reads bottom 'conv_1'"):
        read_net(path)


def test_bottom_produced_only_later_is_an_error(write_prototxt):
    text = (
        'input: "data"\ninput_shape { dim: 1 dim: 2 }\n'
        'layer { name: "a" type: "ReLU" bottom: "b" top: "a" }\n'
        'layer { name: "b" type: "ReLU" bottom: "data" top: "b" }\n'
    )
    with pytest.raises(NetError, match="'a' reads bottom 'b'"):
        read_net(write_prototxt(text))


def test_layer_without_type_or_name(write_prototxt):
    base = 'input: "data"\ninput_shape { dim: 1 dim: 2 }\n'
    with pytest.raises(NetError, match="no type"):
        read_net(write_prototxt(base + 'layer { name: "t" bottom: "data" top: "t" }\n'))
    with pytest.raises(NetError, match="no name"):
        read_net(write_prototxt(base + 'layer { type: "ReLU" bottom: "data" top: "t" }\n', "b.prototxt"))


def test_normalized_net_round_trips_through_v2_text(nin_prototxt, write_prototxt):
    net = read_net(nin_prototxt, input_shape="1,3,224,224")
    again = read_net(write_prototxt(net.to_prototxt()))
    assert [(x.name, x.type, x.bottoms, x.tops) for x in again.layers] == [
        (x.name, x.type, x.bottoms, x.tops) for x in net.layers
    ]
    assert again.inputs == net.inputs
