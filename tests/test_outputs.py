"""Never touch an input: every output path of convert is checked against the inputs before any work, and
outputs appear whole or not at all (no temporary file, no lone .onnx or .pt) whatever fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ninport.caffe.caffemodel import write_caffemodel
from ninport.errors import NinportError, OutputError
from ninport.outputs import atomic_write_bytes, check_outputs

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path]:
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET)
    weights = tmp_path / "w.caffemodel"
    rng = np.random.default_rng(3)
    write_caffemodel(weights, [("conv", "Convolution", [rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
                                                         rng.standard_normal(3).astype(np.float32)])])
    return proto, weights


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _convert(proto, weights, output, **kw):
    from ninport.convert import convert

    return convert(proto, weights, output, **kw)


@pytest.mark.parametrize("target", ["w.caffemodel", "net.prototxt", "w.pt", "link.onnx", "hard.onnx",
                                    "sub/../w.caffemodel"])
def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, model, target):
    proto, weights = model
    (tmp_path / "sub").mkdir()
    os.symlink(weights, tmp_path / "link.onnx")
    os.link(proto, tmp_path / "hard.onnx")
    (tmp_path / "w.pt").write_bytes(weights.read_bytes())  # an input named like the .pt beside w.onnx
    inputs_pt = tmp_path / "w.pt"
    before = _snapshot(tmp_path)
    output = tmp_path / ("w.onnx" if target == "w.pt" else target)
    caffemodel = inputs_pt if target == "w.pt" else weights
    with pytest.raises(OutputError, match="would overwrite the input"):
        _convert(proto, caffemodel, output)
    assert _snapshot(tmp_path) == before  # nothing changed, nothing added


def test_the_cli_refuses_in_one_line(tmp_path, model):
    proto, weights = model
    before = _snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "ninport.cli", "convert", str(proto), str(weights), "-o",
                           str(weights)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "would overwrite the input" in proc.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: (d / "out").mkdir() or d / "out", "is a directory"),
    (lambda d: (d / "file").write_text("x") and d / "file" / "out.onnx", "is a file, not a directory"),
    (lambda d: Path("/proc/self/out.onnx"), "pseudo file system"),
    (lambda d: d / "same.pt", "the same file as the output"),
])
def test_unwritable_output_paths_are_one_line(tmp_path, model, make, message):
    proto, weights = model
    output = make(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match=message):
        _convert(proto, weights, output)
    assert _snapshot(tmp_path) == before
    if (tmp_path / "out").is_dir():
        assert list((tmp_path / "out").iterdir()) == []


def test_a_read_only_directory_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = os.access
    # As root the permission bits do not stop a write, so the check is what is tested here.
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(folder) else real_access(p, mode))
    with pytest.raises(OutputError, match="not writable"):
        check_outputs([folder / "m.onnx"], [])


def test_a_successful_convert_leaves_exactly_its_outputs(tmp_path, model):
    proto, weights = model
    before = set(_snapshot(tmp_path))
    result = _convert(proto, weights, tmp_path / "deep" / "m.onnx")
    assert set(_snapshot(tmp_path)) == before
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["m.onnx", "m.pt"]
    assert Path(result.onnx_path).stat().st_size > 0


def test_a_failing_convert_leaves_nothing(tmp_path, model):
    proto, weights = model
    bad = tmp_path / "bad.prototxt"
    bad.write_text(NET.replace("num_output: 3", "num_output: 4"))  # the weights no longer fit
    (tmp_path / "m.onnx").write_bytes(b"an older output")
    before = _snapshot(tmp_path)
    with pytest.raises(NinportError, match="needs shape"):
        _convert(bad, weights, tmp_path / "m.onnx")
    assert _snapshot(tmp_path) == before  # the older output is untouched, no temporary file is left


def test_atomic_write_leaves_no_temporary_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    with pytest.raises(OutputError):
        atomic_write_bytes(tmp_path / "missing" / "y.bin", b"two")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_a_dotted_layer_name_converts_as_caffe_accepts_it(tmp_path):
    # Caffe never looks inside layer names; torch reads '.' as a path, so the module key writes it as '\u2024'.
    import torch

    import ninport

    proto = tmp_path / "dotted.prototxt"
    proto.write_text(NET.replace('name: "conv"', 'name: "features.0"').replace('name: "relu"', 'name: "features.1"'))
    weights = tmp_path / "w.caffemodel"
    rng = np.random.default_rng(3)
    kernel, bias = rng.standard_normal((3, 2, 3, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    write_caffemodel(weights, [("features.0", "Convolution", [kernel, bias])])
    result = _convert(proto, weights, tmp_path / "m.onnx")  # checked in onnxruntime against the torch module
    module = ninport.load_pt(result.pt_path)
    conv = module.layer_module("features.0")
    assert conv is module.get_submodule("features\u20240")
    np.testing.assert_array_equal(conv.weight.detach().numpy(), kernel)  # the weights found by the dotted name
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    want = np.maximum(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(kernel),
                                                 torch.from_numpy(bias)).numpy(), 0)
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_a_net_bound_to_its_batch_is_one_line_under_a_dynamic_batch(tmp_path):
    proto = tmp_path / "slice.prototxt"
    proto.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
                     'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" '
                     'slice_param { axis: 0 slice_point: 1 } }\n')
    weights = tmp_path / "w.caffemodel"
    write_caffemodel(weights, [("s", "Slice", [])])
    before = _snapshot(tmp_path)
    with pytest.raises(NinportError, match="--static-batch"):
        _convert(proto, weights, tmp_path / "m.onnx")
    assert _snapshot(tmp_path) == before


def test_an_input_nobody_reads_is_one_line_at_convert(tmp_path, model):
    # Caffe (and ninport's inspect) keep it as a net output; an ONNX graph drops such a pass-through.
    _, weights = model
    proto = tmp_path / "unread.prototxt"
    proto.write_text(NET + 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n')
    before = _snapshot(tmp_path)
    with pytest.raises(NinportError, match=r"input\(s\) \['x'\] are read by no layer"):
        _convert(proto, weights, tmp_path / "m.onnx")
    assert _snapshot(tmp_path) == before
