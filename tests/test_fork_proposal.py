"""py-faster-rcnn's proposal layer behind ``type: "Python"`` (and OpenCV's ``Proposal`` spelling), against a
numpy restatement of proposal_layer.py and its NMS; in torch and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import ninport
from tests.layer_harness import write_net

A = 9
PARAM = "'feat_stride': {}"


def _net(h: int, w: int, stride: int, tops: str = 'top: "rois"') -> str:
    return (f'input: "rpn_cls_prob_reshape"\ninput_shape {{ dim: 1 dim: {2 * A} dim: {h} dim: {w} }}\n'
            f'input: "rpn_bbox_pred"\ninput_shape {{ dim: 1 dim: {4 * A} dim: {h} dim: {w} }}\n'
            'input: "im_info"\ninput_shape { dim: 1 dim: 3 }\n'
            'layer { name: "proposal" type: "Python" bottom: "rpn_cls_prob_reshape" bottom: "rpn_bbox_pred" '
            f'bottom: "im_info" {tops}\n'
            f'  python_param {{ module: "rpn.proposal_layer" layer: "ProposalLayer" '
            f'param_str: "{PARAM.format(stride)}" }} }}\n')


def _inputs(h: int, w: int, stride: int, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"rpn_cls_prob_reshape": rng.uniform(0, 1, (1, 2 * A, h, w)).astype(np.float32),
            "rpn_bbox_pred": (rng.standard_normal((1, 4 * A, h, w)) * 0.2).astype(np.float32),
            "im_info": np.array([[h * stride, w * stride, scale]], dtype=np.float32)}


def reference(feed: dict[str, np.ndarray], stride: int, pre: int = 6000, post: int = 300, thresh: float = 0.7,
              min_size: float = 16) -> np.ndarray:
    """proposal_layer.py's forward in numpy (float32 boxes, as its blobs are), with its py_cpu_nms."""
    from ninport.torch.layers.fork_proposal import generate_anchors

    base = generate_anchors(16, (0.5, 1, 2), (8, 16, 32)).astype(np.float32)
    scores = feed["rpn_cls_prob_reshape"][:, A:]
    h, w = scores.shape[-2:]
    sx, sy = np.meshgrid(np.arange(w) * stride, np.arange(h) * stride)
    shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T.astype(np.float32)
    anchors = (base[None] + shifts[:, None]).reshape(-1, 4)
    d = feed["rpn_bbox_pred"].transpose(0, 2, 3, 1).reshape(-1, 4)
    s = scores.transpose(0, 2, 3, 1).reshape(-1)
    ws, hs = anchors[:, 2] - anchors[:, 0] + 1, anchors[:, 3] - anchors[:, 1] + 1
    cx, cy = anchors[:, 0] + 0.5 * ws, anchors[:, 1] + 0.5 * hs
    px, py, pw, ph = d[:, 0] * ws + cx, d[:, 1] * hs + cy, np.exp(d[:, 2]) * ws, np.exp(d[:, 3]) * hs
    im = feed["im_info"][0]
    boxes = np.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], axis=1)
    boxes[:, 0::2] = np.maximum(np.minimum(boxes[:, 0::2], im[1] - 1), 0)
    boxes[:, 1::2] = np.maximum(np.minimum(boxes[:, 1::2], im[0] - 1), 0)
    least = min_size * im[2]
    keep = np.where((boxes[:, 2] - boxes[:, 0] + 1 >= least) & (boxes[:, 3] - boxes[:, 1] + 1 >= least))[0]
    boxes, s = boxes[keep], s[keep]
    order = s.argsort(kind="stable")[::-1][:pre]
    boxes, s = boxes[order], s[order]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, kept = np.arange(len(s)), []
    while order.size:
        i = order[0]
        kept.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0, xx2 - xx1 + 1) * np.maximum(0, yy2 - yy1 + 1)
        order = order[np.where(inter / (areas[i] + areas[order[1:]] - inter) <= thresh)[0] + 1]
    kept = kept[:post]
    return np.hstack([np.zeros((len(kept), 1), np.float32), boxes[kept]])


@pytest.mark.parametrize("h,w,stride,scale", [(6, 8, 16, 1.0), (10, 7, 8, 0.5)])
def test_proposal_layer(tmp_path, h, w, stride, scale):
    proto, _ = write_net(tmp_path, _net(h, w, stride))
    feed = _inputs(h, w, stride, seed=h * w, scale=scale)
    expected = reference(feed, stride)
    assert 10 < len(expected) < A * h * w  # NMS and the size filter both removed boxes
    module = ninport.load(proto)
    import torch

    with torch.no_grad():
        got = module(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    path = tmp_path / "proposal.onnx"
    ninport.export_onnx(module, path)
    (onnx_rois,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["rois"], feed)
    np.testing.assert_allclose(onnx_rois, expected, rtol=1e-5, atol=1e-3)
    # OpenCV's name for the layer, Proposal with proposal_param, converts the same. (OpenCV itself runs that type
    # but keeps boxes py-faster-rcnn's NMS drops, so the numpy restatement is the reference here.)
    text = proto.read_text().replace('type: "Python"', 'type: "Proposal"')
    python = ('python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
              f'param_str: "{PARAM.format(stride)}" }}')
    text = text.replace(python, f"proposal_param {{ feat_stride: {stride} }}")
    assert "Proposal\"" in text and "python_param" not in text
    opencv_proto, _ = write_net(tmp_path, text, name="proposal_type")
    same = ninport.load(opencv_proto)
    with torch.no_grad():
        np.testing.assert_allclose(same(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy(), expected,
                                   rtol=1e-5, atol=1e-3)
