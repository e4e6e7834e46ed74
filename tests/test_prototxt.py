"""Reading prototxt text: the protobuf message, where each layer block starts, and errors that name file:line."""

from __future__ import annotations

import re

import pytest

from ninport.caffe import caffe_pb2
from ninport.caffe.load import read_net
from ninport.caffe.prototxt import LayerBlock, parse_text, read_prototxt, scan_layer_blocks
from ninport.errors import NetError, ParseError


def _block_lines(text: str, keyword: str) -> list[int]:
    """1-based lines of the lines that start with ``keyword {``, found independently of ninport's scanner."""
    return [i for i, line in enumerate(text.splitlines(), 1) if re.match(rf"{keyword}\s*\{{", line)]


def test_gist_file_reads_as_v1_with_every_block_found(nin_prototxt):
    text = nin_prototxt.read_text()
    message, blocks = read_prototxt(nin_prototxt, caffe_pb2.NetParameter())
    assert message.name == "nin_imagenet"
    assert len(message.layer) == 0
    # 2 data layers, 12 convolutions, 12 ReLUs, 4 poolings, 1 dropout, accuracy, loss
    assert len(message.layers) == 2 + 12 + 12 + 4 + 1 + 1 + 1
    assert [b.line for b in blocks] == _block_lines(text, "layers")
    assert {b.keyword for b in blocks} == {"layers"}


def test_scanner_ignores_keywords_in_strings_comments_and_nested_blocks():
    text = (
        'name: "layer { not a block"\n'  # line 1
        "# layers { in a comment\n"  # line 2
        "layer {\n"  # line 3
        '  name: "a" type: "ReLU"\n'
        "  include { stage: 'layers {' }\n"
        "}\n"
        "layers <\n"  # line 7: text format also accepts angle brackets
        "  layer { name: 'v0' type: 'relu' }\n"  # a V0 layer nested in a V1 block: not top level
        ">\n"
        "layer{name:'b'}\n"  # line 10, no spaces
    )
    assert scan_layer_blocks(text) == [LayerBlock("layer", 3), LayerBlock("layers", 7), LayerBlock("layer", 10)]
    message = parse_text(text, caffe_pb2.NetParameter())
    assert len(message.layer) == 2 and len(message.layers) == 1


def test_mixed_layer_and_layers_blocks_keep_file_order(write_prototxt):
    text = (
        'input: "data"\n'
        "input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n"
        "layers {\n"  # line 3
        '  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"\n'
        "  convolution_param { num_output: 4 kernel_size: 3 }\n"
        "}\n"
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'  # line 7
        "layers {\n"  # line 8
        '  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"\n'
        "  pooling_param { pool: MAX kernel_size: 2 stride: 2 }\n"
        "}\n"
        'layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"\n'  # line 12
        "  convolution_param { num_output: 2 kernel_size: 1 } }\n"
    )
    net = read_net(write_prototxt(text))
    assert [(x.name, x.type, x.line) for x in net.layers] == [
        ("input", "Input", None),
        ("conv1", "Convolution", 3),
        ("relu1", "ReLU", 7),
        ("pool1", "Pooling", 8),
        ("conv2", "Convolution", 12),
    ]


def test_misspelled_field_names_file_line_and_field(write_prototxt):
    text = (
        'input: "data"\n'
        "input_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n"
        "layer {\n"
        '  name: "relu"\n'
        '  type: "ReLU"\n'
        '  botom: "data"\n'  # line 9
        '  top: "data"\n'
        "}\n"
    )
    path = write_prototxt(text)
    with pytest.raises(ParseError) as info:
        read_net(path)
    message = str(info.value)
    assert message.startswith(f"{path}:9:"), message
    assert "botom" in message
    assert "\n" not in message


def test_misspelled_field_in_the_gist_file(tmp_path, nin_prototxt):
    lines = nin_prototxt.read_text().splitlines(keepends=True)
    # the first 'bottom: "data"' of the file is in conv1's block
    index = next(i for i, line in enumerate(lines) if line.strip() == 'bottom: "data"')
    lines[index] = lines[index].replace("bottom", "botom")
    path = tmp_path / "bad.prototxt"
    path.write_text("".join(lines))
    with pytest.raises(ParseError, match=rf"^{re.escape(str(path))}:{index + 1}:\d+: .*botom"):
        read_net(path)


def test_unclosed_brace_names_the_file_and_a_line(write_prototxt):
    text = 'input: "data"\ninput_shape { dim: 1 dim: 3 }\nlayer {\n  name: "r"\n  type: "ReLU"\n'
    path = write_prototxt(text)
    with pytest.raises(ParseError, match=rf"^{re.escape(str(path))}:\d+:\d+: "):
        read_net(path)


def test_wrong_value_type_names_the_line(write_prototxt):
    text = 'name: "n"\nlayer {\n  name: "c"\n  type: "Convolution"\n  convolution_param { num_output: many }\n}\n'
    path = write_prototxt(text)
    with pytest.raises(ParseError, match=rf"^{re.escape(str(path))}:5:"):
        read_net(path)


def test_empty_prototxt_is_an_error_naming_the_file(write_prototxt):
    path = write_prototxt("")
    with pytest.raises(NetError, match=re.escape(str(path))):
        read_net(path)


def test_comment_only_prototxt_is_an_error(write_prototxt):
    path = write_prototxt("# nothing here\n\n")
    with pytest.raises(NetError, match="no layers"):
        read_net(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ParseError, match="no such file"):
        read_net(tmp_path / "nope.prototxt")
    with pytest.raises(ParseError, match="directory"):
        read_net(tmp_path)


def test_binary_file_as_prototxt(tmp_path):
    path = tmp_path / "weights.prototxt"
    path.write_bytes(b"\x0a\x03abc\x00\x01\x02")
    with pytest.raises(ParseError, match="binary"):
        read_net(path)


def test_non_utf8_prototxt(tmp_path):
    path = tmp_path / "latin1.prototxt"
    path.write_bytes('name: "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ParseError, match="UTF-8"):
        read_net(path)


def test_crlf_line_endings_give_the_same_net_and_lines(tmp_path, nin_prototxt):
    path = tmp_path / "crlf.prototxt"
    path.write_bytes(nin_prototxt.read_bytes().replace(b"\n", b"\r\n"))
    a, b = read_net(nin_prototxt), read_net(path)
    assert [(x.name, x.line) for x in a.layers] == [(x.name, x.line) for x in b.layers]


def test_utf8_byte_order_mark_is_not_part_of_the_text(tmp_path, nin_prototxt):
    path = tmp_path / "bom.prototxt"
    path.write_bytes(b"\xef\xbb\xbf" + nin_prototxt.read_bytes())
    net = read_net(path)
    assert net.name == "nin_imagenet"
    assert net.layer("conv1").line == read_net(nin_prototxt).layer("conv1").line
