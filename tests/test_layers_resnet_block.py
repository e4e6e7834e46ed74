"""A ResNet-style net written as the published ResNet deploy prototxts are (Convolution without bias, then
in-place BatchNorm, Scale with bias and ReLU; a projection and an identity shortcut joined by Eltwise SUM),
with seeded weights: torch and the exported ONNX against OpenCV's Caffe importer, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_layers_harness import LayerNet, assert_close

GLOBAL_STATS = "batch_norm_param { use_global_stats: true }"


def conv_bn(name: str, bottom: str, num_output: int, kernel: int, stride: int = 1, pad: int = 0,
            relu: bool = True, bn_param: str = GLOBAL_STATS) -> str:
    """Convolution (no bias) → BatchNorm → Scale (bias) → ReLU, the last three in place, in KaimingHe's style."""
    text = (
        f'layer {{ bottom: "{bottom}" top: "{name}" name: "{name}" type: "Convolution"\n'
        f"  convolution_param {{ num_output: {num_output} kernel_size: {kernel} pad: {pad} stride: {stride} "
        f"bias_term: false }} }}\n"
        f'layer {{ bottom: "{name}" top: "{name}" name: "bn_{name}" type: "BatchNorm" {bn_param} }}\n'
        f'layer {{ bottom: "{name}" top: "{name}" name: "scale_{name}" type: "Scale" '
        f"scale_param {{ bias_term: true }} }}\n"
    )
    if relu:
        text += f'layer {{ bottom: "{name}" top: "{name}" name: "{name}_relu" type: "ReLU" }}\n'
    return text


def bottleneck(name: str, bottom: str, width: int, out: int, stride: int, projection: bool, bn_param: str) -> str:
    text = ""
    shortcut = bottom
    if projection:
        shortcut = f"res{name}_branch1"
        text += conv_bn(shortcut, bottom, out, 1, stride, relu=False, bn_param=bn_param)
    text += conv_bn(f"res{name}_branch2a", bottom, width, 1, stride, bn_param=bn_param)
    text += conv_bn(f"res{name}_branch2b", f"res{name}_branch2a", width, 3, 1, 1, bn_param=bn_param)
    text += conv_bn(f"res{name}_branch2c", f"res{name}_branch2b", out, 1, relu=False, bn_param=bn_param)
    text += (
        f'layer {{ bottom: "{shortcut}" bottom: "res{name}_branch2c" top: "res{name}" name: "res{name}" '
        f'type: "Eltwise" eltwise_param {{ operation: SUM }} }}\n'
        f'layer {{ bottom: "res{name}" top: "res{name}" name: "res{name}_relu" type: "ReLU" }}\n'
    )
    return text


def resnet_text(bn_param: str) -> str:
    return (
        'name: "resnet_block"\ninput: "data"\ninput_shape { dim: 2 dim: 3 dim: 32 dim: 32 }\n'
        + conv_bn("conv1", "data", 16, 7, 2, 3, bn_param=bn_param)
        + 'layer { bottom: "conv1" top: "pool1" name: "pool1" type: "Pooling" '
        "pooling_param { kernel_size: 3 stride: 2 pool: MAX } }\n"
        + bottleneck("2a", "pool1", 8, 32, 1, True, bn_param)
        + bottleneck("2b", "res2a", 8, 32, 1, False, bn_param)
        + bottleneck("3a", "res2b", 16, 64, 2, True, bn_param)
    )


@pytest.mark.parametrize("bn_param", [GLOBAL_STATS, ""], ids=["use_global_stats", "phase_default"])
def test_resnet_block_matches_opencv(tmp_path: Path, bn_param: str):
    net = LayerNet(tmp_path, resnet_text(bn_param), seed=11)
    module = net.module
    # Every in-place BatchNorm/Scale/ReLU is its own submodule under its Caffe name, with Caffe-named state.
    assert module.layer_types["bn_res2a_branch2b"] == "BatchNorm"
    state = module.state_dict()
    assert "bn_res2a_branch1.scale_factor" in state and "scale_res2a_branch1.bias" in state
    assert "res2a_branch1.bias" not in state  # bias_term: false
    assert module.output_names == ["res3a"]
    assert module.blob_shapes["res3a"] == (2, 64, 4, 4)

    x = np.random.default_rng(4).normal(size=(2, 3, 32, 32)).astype(np.float32)
    inputs = {"data": x}
    reference, res2b = net.opencv(inputs, ["res3a_relu", "res2b_relu"])
    assert reference.shape == (2, 64, 4, 4) and np.abs(reference).max() > 0.1
    with torch.no_grad():
        blobs = module.forward_blobs(torch.from_numpy(x))
    assert_close(blobs["res2b"].detach().numpy(), res2b, "torch res2b (after the in-place ReLU)")
    (torch_out,) = net.torch(inputs)
    (ort_out,) = net.onnxruntime(inputs)
    assert_close(torch_out, reference, "torch")
    assert_close(ort_out, reference, "onnxruntime")
