"""Deep BatchNorm nets for the parity tests, written here: a 28-layer MobileNet-style net (depthwise
convolutions as group=channels Convolution, BatchNorm+Scale) and a 50-layer ResNet-style net (bottlenecks with
Caffe's BatchNorm+Scale+Eltwise), as prototxt text plus seeded weights from ninport's seeded writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# BatchNorm's third blob divides the stored sums (batch_norm_layer.cpp); the net has 0.5 and 1000.
BN_FACTORS = (0.5, 1000.0)


def _conv(name: str, bottom: str, out: int, kernel: int, stride: int = 1, group: int = 1, bias: bool = False) -> str:
    extra = f"    group: {group}\n" if group > 1 else ""
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f"  convolution_param {{ num_output: {out} kernel_size: {kernel} stride: {stride} pad: {kernel // 2}\n"
            f"{extra}    bias_term: {'true' if bias else 'false'} }} }}\n")


def _bn_scale_relu(name: str, relu: bool = True) -> str:
    text = (f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" }}\n'
            f'layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}"\n'
            f"  scale_param {{ bias_term: true }} }}\n")
    if relu:
        text += f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
    return text


def _head(name: str, channels: int, size: int) -> str:
    return (f'name: "{name}"\nlayer {{ name: "data" type: "Input" top: "data"\n'
            f"  input_param {{ shape {{ dim: 1 dim: {channels} dim: {size} dim: {size} }} }} }}\n")


def _tail(bottom: str, classes: int) -> str:
    return (f'layer {{ name: "pool" type: "Pooling" bottom: "{bottom}" top: "pool"\n'
            f"  pooling_param {{ pool: AVE global_pooling: true }} }}\n"
            f'layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"\n'
            f"  inner_product_param {{ num_output: {classes} }} }}\n"
            f'layer {{ name: "prob" type: "Softmax" bottom: "fc" top: "prob" }}\n')


def mobilenet_prototxt(size: int = 64) -> str:
    """conv1, 13 depthwise/pointwise pairs and fc: 28 layers with weights, each conv followed by
    BatchNorm+Scale+ReLU."""
    text = _head("mobilenet_style", 3, size)
    text += _conv("conv1", "data", 8, 3, stride=2) + _bn_scale_relu("conv1")
    plan = [(16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (48, 2), (48, 1), (48, 1), (48, 1), (48, 1), (48, 1),
            (64, 2), (64, 1)]
    bottom, channels = "conv1", 8
    for i, (out, stride) in enumerate(plan, start=2):
        dw, pw = f"conv{i}_dw", f"conv{i}_pw"
        text += _conv(dw, bottom, channels, 3, stride=stride, group=channels) + _bn_scale_relu(dw)
        text += _conv(pw, dw, out, 1) + _bn_scale_relu(pw)
        bottom, channels = pw, out
    return text + _tail(bottom, 10)


def resnet_prototxt(size: int = 32) -> str:
    """conv1, 16 bottleneck blocks of three convolutions (3, 4, 6, 3 per stage, a projection shortcut
    opening each stage) and fc: 50 layers with weights on the main path."""
    text = _head("resnet_style", 3, size)
    text += _conv("conv1", "data", 16, 3) + _bn_scale_relu("conv1")
    bottom = "conv1"
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (4, 8, 16, 32)), start=2):
        for block in range(blocks):
            name = f"res{stage}{chr(ord('a') + block)}"
            stride = 2 if block == 0 and stage > 2 else 1
            out = width * 4
            if block == 0:
                shortcut = f"{name}_branch1"
                text += _conv(shortcut, bottom, out, 1, stride=stride) + _bn_scale_relu(shortcut, relu=False)
            else:
                shortcut = bottom
            a, b, c = (f"{name}_branch2{x}" for x in "abc")
            text += _conv(a, bottom, width, 1, stride=stride) + _bn_scale_relu(a)
            text += _conv(b, a, width, 3) + _bn_scale_relu(b)
            text += _conv(c, b, out, 1) + _bn_scale_relu(c, relu=False)
            text += (f'layer {{ name: "{name}" type: "Eltwise" bottom: "{shortcut}" bottom: "{c}" top: "{name}" }}\n'
                     f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n')
            bottom = name
    return text + _tail(bottom, 10)


def write_net(text: str, directory: Path, stem: str, seed: int = 0) -> tuple[Path, Path]:
    """Write ``text`` and seeded weights (BatchNorm factors alternating through ``BN_FACTORS``); returns
    (prototxt, caffemodel)."""
    from ninport.caffe.caffemodel import write_caffemodel
    from ninport.caffe.load import read_net
    from ninport.caffe.seeded import seed_weights

    prototxt = directory / f"{stem}.prototxt"
    prototxt.write_text(text)
    net = seed_weights(read_net(prototxt), seed=seed)
    bn = 0
    for layer in net.layers:
        if layer.type == "BatchNorm":
            mean, var, factor = layer.blobs
            new = np.float32(BN_FACTORS[bn % len(BN_FACTORS)])
            layer.blobs = [mean / factor * new, var / factor * new, np.array([new], np.float32)]
            bn += 1
    caffemodel = directory / f"{stem}.caffemodel"
    write_caffemodel(caffemodel, [(x.name, x.type, x.blobs) for x in net.layers if x.blobs], layout="v2",
                     name=net.name)
    return prototxt, caffemodel


def weight_layers(text: str) -> int:
    return text.count('type: "Convolution"') + text.count('type: "InnerProduct"')


if __name__ == "__main__":  # python tests/parity_nets.py DIR: write both nets there, for ninport verify by hand
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for stem, text in (("mobilenet_style", mobilenet_prototxt()), ("resnet_style", resnet_prototxt())):
        print(*write_net(text, out, stem))
