"""``ninport inspect``: the JSON report, the text table, and one clean ``Error:`` line for every kind of bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

# NiN's convolutions at 224 x 224, batch 1: (layer, in, out, kernel, output size); see test_shapes.py for the
# output sizes worked out from conv_layer.cpp / pooling_layer.cpp.
NIN_CONVS = [
    ("conv1", 3, 96, 11, 54), ("cccp1", 96, 96, 1, 54), ("cccp2", 96, 96, 1, 54),
    ("conv2", 96, 256, 5, 27), ("cccp3", 256, 256, 1, 27), ("cccp4", 256, 256, 1, 27),
    ("conv3", 256, 384, 3, 13), ("cccp5", 384, 384, 1, 13), ("cccp6", 384, 384, 1, 13),
    ("conv4-1024", 384, 1024, 3, 6), ("cccp7-1024", 1024, 1024, 1, 6), ("cccp8-1024", 1024, 1000, 1, 6),
]

SMALL_NET = """name: "small"
input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 16 kernel_size: 11 stride: 4 }
}
"""


def assert_clean_error(result, *needles: str) -> str:
    """Exit status != 0, exactly one stderr line starting with 'Error:', no traceback; returns that line."""
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# The report


def test_json_report_of_nin(run_cli, nin_prototxt):
    result = run_cli("inspect", nin_prototxt, "--input-shape", "1,3,224,224", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # fails if anything else is printed
    assert result.stdout.count("\n") == 1
    assert set(report) == {"name", "dialects", "inputs", "layers", "total_params", "total_macs"}
    assert report["dialects"] == []  # upstream Caffe
    assert report["name"] == "nin_imagenet"
    assert report["inputs"] == {"data": [1, 3, 224, 224]}
    for layer in report["layers"]:
        assert set(layer) == {"name", "type", "bottoms", "tops", "top_shapes", "params", "macs"}
        assert len(layer["top_shapes"]) == len(layer["tops"])
    layers = {x["name"]: x for x in report["layers"]}
    conv1 = layers["conv1"]
    assert conv1["type"] == "Convolution" and conv1["bottoms"] == ["data"]
    assert conv1["top_shapes"] == [[1, 96, 54, 54]]
    assert conv1["params"] == 96 * 3 * 11 * 11 + 96
    assert conv1["macs"] == 96 * 54 * 54 * 3 * 11 * 11
    assert layers["relu0"]["tops"] == ["conv1"]  # the last in-place writer keeps Caffe's name
    assert layers["pool4"]["top_shapes"] == [[1, 1000, 1, 1]]
    assert layers["pool3"]["top_shapes"] == [[1, 384, 6, 6]]
    for name, cin, out, k, size in NIN_CONVS:
        assert layers[name]["params"] == out * cin * k * k + out
        assert layers[name]["macs"] == out * size * size * cin * k * k
    assert report["total_params"] == 7_595_176
    assert report["total_macs"] == sum(out * s * s * cin * k * k for _, cin, out, k, s in NIN_CONVS)
    assert sum(x["params"] for x in report["layers"]) == report["total_params"]


def test_json_top_shapes_follow_the_order_of_tops(run_cli, write_prototxt):
    text = (
        'input: "x"\ninput_shape { dim: 1 dim: 6 }\n'
        'layer { name: "s" type: "Slice" bottom: "x" top: "big" top: "small" top: "mid"\n'
        "  slice_param { axis: 1 slice_point: 3 slice_point: 4 } }\n"
    )
    result = run_cli("inspect", write_prototxt(text), "--json")
    assert result.exit_code == 0, result.stderr
    (s,) = [x for x in json.loads(result.stdout)["layers"] if x["name"] == "s"]
    assert dict(zip(s["tops"], s["top_shapes"])) == {"big": [1, 3], "small": [1, 1], "mid": [1, 2]}


@pytest.mark.parametrize(("phase", "batch"), [("test", 89), ("train", 64), ("TRAIN", 64)])
def test_json_phase(run_cli, nin_prototxt, phase, batch):
    result = run_cli("inspect", nin_prototxt, "--phase", phase, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inputs"] == {"data": [batch, 3, 224, 224]}
    assert report["total_params"] == 7_595_176
    assert report["layers"][-1]["name"] == "pool4"


def test_text_report_of_nin(run_cli, nin_prototxt):
    result = run_cli("inspect", nin_prototxt)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "89×3×224×224" in out
    assert "7,595,176" in out
    assert "spatial trace: 224 → 54 (conv1) → 27 (pool0) → 13 (pool2) → 6 (pool3) → 1 (pool4)" in out
    assert re.search(r"^outputs: pool4$", out, re.MULTILINE)
    assert result.stderr == ""


def test_text_report_at_227(run_cli, nin_prototxt):
    result = run_cli("inspect", nin_prototxt, "--input-shape", "1,3,227,227")
    assert result.exit_code == 0, result.stderr
    assert "spatial trace: 227 → 55 (conv1) → 27 (pool0) → 13 (pool2) → 6 (pool3) → 1 (pool4)" in result.stdout


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_inspect_with_weights(run_cli, nin_prototxt, nin_weights_v1, nin_weights_v2, layout):
    weights = nin_weights_v1 if layout == "v1" else nin_weights_v2
    result = run_cli("inspect", nin_prototxt, weights)
    assert result.exit_code == 0, result.stderr
    assert "12 layers matched" in result.stdout


def test_v2_and_deploy_files_report_the_same(run_cli, nin_prototxt, nin_v2_prototxt, nin_deploy_prototxt):
    reports = []
    for path in (nin_prototxt, nin_v2_prototxt, nin_deploy_prototxt):
        result = run_cli("inspect", path, "--input-shape", "1,3,224,224", "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        del report["layers"][0]["name"]  # "data" (data layer) vs "input" (net-level input)
        reports.append(report)
    assert reports[0] == reports[1] == reports[2]


def test_help_texts(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0 and "inspect" in result.stdout
    result = run_cli("inspect", "--help")
    assert result.exit_code == 0
    for option in ("--json", "--input-shape", "--phase", "--debug"):
        assert option in result.stdout


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line, naming the thing


def test_truncated_caffemodel(run_cli, nin_prototxt, nin_weights_v1, tmp_path):
    data = nin_weights_v1.read_bytes()
    path = tmp_path / "half.caffemodel"
    path.write_bytes(data[: len(data) // 2])
    assert_clean_error(run_cli("inspect", nin_prototxt, path), str(path))


def test_random_bytes_caffemodel(run_cli, nin_prototxt, tmp_path):
    path = tmp_path / "noise.caffemodel"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    assert_clean_error(run_cli("inspect", nin_prototxt, path), str(path), "caffemodel")


def test_empty_prototxt(run_cli, write_prototxt):
    path = write_prototxt("")
    assert_clean_error(run_cli("inspect", path), str(path))


def test_misspelled_field(run_cli, write_prototxt):
    text = SMALL_NET.replace('  bottom: "data"', '  botom: "data"')
    path = write_prototxt(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "botom" in x)
    assert line == 7
    assert_clean_error(run_cli("inspect", path), f"{path}:{line}:", "botom")


def test_misspelled_field_in_json_mode_prints_nothing_on_stdout(run_cli, write_prototxt):
    path = write_prototxt(SMALL_NET.replace("num_output", "num_ouput"))
    result = run_cli("inspect", path, "--json")
    assert_clean_error(result, f"{path}:9:", "num_ouput")
    assert result.stdout == ""


def test_unclosed_brace(run_cli, write_prototxt):
    path = write_prototxt(SMALL_NET.rstrip().rstrip("}"))
    line = assert_clean_error(run_cli("inspect", path), str(path))
    assert re.match(rf"Error: {re.escape(str(path))}:\d+:\d+: ", line)


def test_bottom_nobody_produces(run_cli, write_prototxt):
    path = write_prototxt(SMALL_NET + 'layer { name: "relu1" type: "ReLU" bottom: "conv_1" top: "relu1" }\n')
    assert_clean_error(run_cli("inspect", path), f"{path}:11", "'relu1'", "'conv_1'")


def test_unknown_layer_types_all_listed(run_cli, write_prototxt):
    text = SMALL_NET + (
        'layer { name: "warp" type: "SpatialTransformer" bottom: "conv1" top: "warp" }\n'
        'layer { name: "py" type: "Python" bottom: "warp" top: "py" }\n'
    )
    path = write_prototxt(text)
    assert_clean_error(
        run_cli("inspect", path), "SpatialTransformer", "Python", "'warp'", "'py'", f"{path}:11", f"{path}:12"
    )


def test_weights_of_a_different_net(run_cli, write_prototxt, nin_weights_v2):
    path = write_prototxt(SMALL_NET)
    assert_clean_error(
        run_cli("inspect", path, nin_weights_v2), "'conv1'", "blob 0", "[16, 3, 11, 11]", "[96, 3, 11, 11]"
    )


@pytest.mark.parametrize("which", ["prototxt", "caffemodel"])
def test_missing_file(run_cli, nin_prototxt, tmp_path, which):
    missing = tmp_path / f"missing.{which}"
    args = [missing] if which == "prototxt" else [nin_prototxt, missing]
    assert_clean_error(run_cli("inspect", *args), str(missing), "no such file")


def test_bad_input_shape(run_cli, nin_prototxt):
    assert_clean_error(run_cli("inspect", nin_prototxt, "--input-shape", "1,3,x,224"), "--input-shape", "1,3,x,224")


def test_input_too_small_for_the_net(run_cli, nin_prototxt):
    # conv1 fits at 12 ((12 - 11) / 4 + 1 = 1), but pool0's 3x3 window does not fit in 1x1: Caffe would give
    # ceil((1 - 3) / 2) + 1 = 0 rows
    assert_clean_error(run_cli("inspect", nin_prototxt, "--input-shape", "1,3,12,12"), "'pool0'")


@pytest.mark.parametrize("where", ["group", "command"])
def test_debug_shows_the_traceback(run_cli, write_prototxt, where):
    path = write_prototxt(SMALL_NET + 'layer { name: "relu1" type: "ReLU" bottom: "conv_1" top: "relu1" }\n')
    args = ["--debug", "inspect", path] if where == "group" else ["inspect", path, "--debug"]
    result = run_cli(*args)
    assert result.exit_code != 0
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")
