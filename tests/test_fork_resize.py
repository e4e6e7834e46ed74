"""Interp (PSPNet/DeepLab) against OpenCV's importer and a numpy restatement of interp.cpp."""

from __future__ import annotations

import numpy as np
import pytest

from tests.layer_harness import check_net, opencv_outputs, write_net

RNG = np.random.default_rng(5)


def _interp_reference(x: np.ndarray, crop_beg: int, crop_end: int, h2: int, w2: int) -> np.ndarray:
    """hszhao/PSPNet src/caffe/util/interp.cpp (caffe_cpu_interp2), in float64: ratios in float32 as there."""
    x = x[:, :, crop_beg : x.shape[2] - crop_end, crop_beg : x.shape[3] - crop_end].astype(np.float64)
    h1, w1 = x.shape[2:]
    rh = np.float32(h1 - 1) / np.float32(h2 - 1) if h2 > 1 else np.float32(0)
    rw = np.float32(w1 - 1) / np.float32(w2 - 1) if w2 > 1 else np.float32(0)
    out = np.zeros(x.shape[:2] + (h2, w2))
    for i in range(h2):
        hr = np.float32(rh * np.float32(i))
        h = int(hr)
        hp = 1 if h < h1 - 1 else 0
        hl = float(hr) - h
        for j in range(w2):
            wr = np.float32(rw * np.float32(j))
            w = int(wr)
            wp = 1 if w < w1 - 1 else 0
            wl = float(wr) - w
            out[:, :, i, j] = ((1 - hl) * ((1 - wl) * x[:, :, h, w] + wl * x[:, :, h, w + wp])
                               + hl * ((1 - wl) * x[:, :, h + hp, w] + wl * x[:, :, h + hp, w + wp]))
    return out


CASES = [
    ("zoom_factor: 8", 0, 0, lambda h, w: ((h - 1) * 8 + 1, (w - 1) * 8 + 1)),
    ("shrink_factor: 2", 0, 0, lambda h, w: ((h - 1) // 2 + 1, (w - 1) // 2 + 1)),
    ("height: 13 width: 4", 0, 0, lambda h, w: (13, 4)),
    ("shrink_factor: 2 zoom_factor: 3", 0, 0, lambda h, w: (((h - 1) // 2) * 3 + 1, ((w - 1) // 2) * 3 + 1)),
    ("zoom_factor: 2 pad_beg: -1 pad_end: -2", 1, 2, lambda h, w: ((h - 4) * 2 + 1, (w - 4) * 2 + 1)),
]


@pytest.mark.parametrize("spec,beg,end,size", CASES, ids=[c[0] for c in CASES])
def test_interp(tmp_path, spec, beg, end, size):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 2 dim: 7 dim: 9 }\n'
            f'layer {{ name: "out" type: "Interp" bottom: "data" top: "out" interp_param {{ {spec} }} }}\n')
    proto, _ = write_net(tmp_path, text)
    x = RNG.standard_normal((1, 2, 7, 9)).astype(np.float32)
    expected = _interp_reference(x, beg, end, *size(7, 9))
    if beg == 0 and end == 0 and "shrink" not in spec:
        # OpenCV's Interp implements zoom and height/width (shrink gives it an empty top, the crop it ignores):
        # a second reference where it applies.
        ref = opencv_outputs(proto, None, {"data": x}, ["out"])["out"]
        np.testing.assert_allclose(ref, expected, rtol=1e-5, atol=1e-5)
    check_net(tmp_path, proto, None, {"data": x}, {"out": expected})


def test_deeplab_v1_enum_interp(tmp_path):
    # DeepLab v1 writes the V1 enum: layers { type: INTERP interp_param { ... } }.
    text = ('input: "data"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 5\ninput_dim: 6\n'
            'layers { name: "out" type: INTERP bottom: "data" top: "out" interp_param { zoom_factor: 4 } }\n')
    proto, _ = write_net(tmp_path, text)
    x = RNG.standard_normal((1, 2, 5, 6)).astype(np.float32)
    check_net(tmp_path, proto, None, {"data": x}, {"out": _interp_reference(x, 0, 0, 17, 21)})
