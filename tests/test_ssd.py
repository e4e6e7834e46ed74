"""The SSD fork's layers (weiliu89/caffe) in torch and onnxruntime against OpenCV's Caffe importer, which
implements PriorBox, Normalize, Permute and DetectionOutput; a numpy restatement of prior_box_layer.cpp where
OpenCV differs (the fork truncates box sizes to int), and of DetectionOutput for what OpenCV lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from layer_harness import assert_close, opencv_outputs, torch_blobs, write_net

import ninport
from ninport.errors import NinportError

HEADER = 'name: "ssd_tiny"\ninput: "data"\ninput_shape {{ dim: {n} dim: 3 dim: {h} dim: {w} }}\n'


def layer(name: str, kind: str, bottoms: list[str], param: str = "", tops: list[str] | None = None) -> str:
    bottom = "".join(f' bottom: "{b}"' for b in bottoms)
    top = "".join(f' top: "{t}"' for t in (tops or [name]))
    return f'layer {{ name: "{name}" type: "{kind}"{bottom}{top} {param} }}\n'


def conv(name: str, bottom: str, out: int, stride: int = 1) -> str:
    return layer(name, "Convolution", [bottom],
                 f"convolution_param {{ num_output: {out} kernel_size: 3 pad: 1 stride: {stride} }}")


def conv_weights(rng, name: str, cin: int, cout: int, scale: float = 0.3):
    return (name, "Convolution", [(rng.normal(size=(cout, cin, 3, 3)) * scale).astype(np.float32),
                                  (rng.normal(size=(cout,)) * 0.1).astype(np.float32)])


# ---- the small SSD-shaped net -----------------------------------------------------------------------------

PRIOR_PARAMS = [
    "prior_box_param { min_size: 8 max_size: 16 aspect_ratio: 2 flip: true clip: false "
    "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 4 offset: 0.5 }",
    "prior_box_param { min_size: 16 max_size: 28 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: true "
    "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }",
]
PRIORS = [4, 6]  # 1 + max + 2 flipped ratios; 1 + max + 4


def ssd_net(tmp_path: Path, seed: int = 0, classes: int = 4, n: int = 1, hw: int = 32,
            detection: str = "", share_location: bool = True, norm: str = "across_spatial: false "
            "channel_shared: false") -> tuple[Path, Path, dict]:
    """data → conv1 (stride 2) → Normalize → two feature maps, each with loc/conf heads and a PriorBox; the heads
    permuted, flattened and concatenated; softmax over classes; DetectionOutput. Seeded weights."""
    rng = np.random.default_rng(seed)
    loc_classes = 1 if share_location else classes
    text = HEADER.format(n=n, h=hw, w=hw)
    text += conv("conv1", "data", 8, stride=2) + layer("relu1", "ReLU", ["conv1"], tops=["conv1"])
    text += layer("pool1", "Pooling", ["conv1"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
    text += layer("norm1", "Normalize", ["pool1"], f"norm_param {{ {norm} scale_filler {{ value: 20 }} }}")
    text += conv("conv2", "pool1", 8, stride=2)
    weights = [conv_weights(rng, "conv1", 3, 8), conv_weights(rng, "conv2", 8, 8)]
    shared = "channel_shared: true" in norm or "channel_shared" not in norm
    weights.append(("norm1", "Normalize", [np.asarray(rng.uniform(0.5, 2, size=() if shared else (8,)),
                                                      dtype=np.float32)]))
    locs, confs, priors = [], [], []
    for feature, prior, count in zip(["norm1", "conv2"], PRIOR_PARAMS, PRIORS):
        for kind, width in (("loc", count * 4 * loc_classes), ("conf", count * classes)):
            name = f"{feature}_{kind}"
            text += conv(name, feature, width)
            text += layer(f"{name}_perm", "Permute", [name], "permute_param { order: 0 order: 2 order: 3 order: 1 }")
            text += layer(f"{name}_flat", "Flatten", [f"{name}_perm"], "flatten_param { axis: 1 }")
            weights.append(conv_weights(rng, name, 8, width, 0.15 if kind == "conf" else 0.1))
            (locs if kind == "loc" else confs).append(f"{name}_flat")
        text += layer(f"{feature}_priorbox", "PriorBox", [feature, "data"], prior)
        priors.append(f"{feature}_priorbox")
    text += layer("mbox_loc", "Concat", locs, "concat_param { axis: 1 }")
    text += layer("mbox_conf", "Concat", confs, "concat_param { axis: 1 }")
    text += layer("mbox_priorbox", "Concat", priors, "concat_param { axis: 2 }")
    text += layer("mbox_conf_reshape", "Reshape", ["mbox_conf"],
                  f"reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }}")
    text += layer("mbox_conf_softmax", "Softmax", ["mbox_conf_reshape"], "softmax_param { axis: 2 }")
    text += layer("mbox_conf_flatten", "Flatten", ["mbox_conf_softmax"], "flatten_param { axis: 1 }")
    text += layer("detection_out", "DetectionOutput", ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"],
                  f"detection_output_param {{ num_classes: {classes} share_location: "
                  f"{str(share_location).lower()} {detection or DEFAULT_DETECTION} }}")
    proto, model = write_net(tmp_path, text, weights, name=f"ssd{seed}")
    inputs = {"data": np.random.default_rng(100 + seed).uniform(-1, 1, size=(n, 3, hw, hw)).astype(np.float32)}
    return proto, model, inputs


DEFAULT_DETECTION = ("background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 60 } code_type: CENTER_SIZE "
                     "keep_top_k: 40 confidence_threshold: 0.2")


def opencv_detections(proto: Path, model: Path, inputs: dict) -> np.ndarray:
    """OpenCV's DetectionOutput rows, without the all-zero rows it pads its output with up to keep_top_k."""
    rows = opencv_outputs(proto, model, inputs, ["detection_out"])["detection_out"].reshape(-1, 7)
    return rows[np.abs(rows).sum(axis=1) > 0].reshape(1, 1, -1, 7)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_same_detections(reference: np.ndarray, got: np.ndarray, what: str) -> None:
    """Detections as sets: every reference row has one partner of the same image and label, IoU ≥ 0.99 and
    score within 1e-4, and no row is left over on either side."""
    ref = reference.reshape(-1, 7)
    out = got.reshape(-1, 7)
    assert ref.shape == out.shape, f"{what}: {len(out)} detections, the reference has {len(ref)}"
    free = list(range(len(out)))

    def same_box(a, b):  # a box with max <= min (CORNER codes; the empty rows) has no IoU: compare corners
        if a[2] <= a[0] or a[3] <= a[1]:
            return bool(np.abs(a - b).max() <= 1e-4)
        return iou(a, b) >= 0.99

    for row in ref:
        match = [j for j in free if out[j, 0] == row[0] and out[j, 1] == row[1] and abs(out[j, 2] - row[2]) <= 1e-4
                 and same_box(row[3:], out[j, 3:])]
        assert match, f"{what}: no partner for reference row {row.tolist()}"
        free.remove(match[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssd")
    proto, model, inputs = ssd_net(tmp)
    return tmp, proto, model, inputs


def test_detection_end_to_end_matches_opencv(tiny):
    tmp, proto, model, inputs = tiny
    reference = opencv_detections(proto, model, inputs)
    assert reference.shape[2] > 5  # a test with a handful of boxes or none would prove little
    module = ninport.load(proto, model)
    blobs = torch_blobs(module, inputs)
    assert_same_detections(reference, blobs["detection_out"], "torch")
    path = tmp / "ssd.onnx"
    ninport.export_onnx(module, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["detection_out"], inputs)[0]
    assert_same_detections(reference, got, "onnxruntime")
    # Caffe's row order: image, label ascending, score descending within a label.
    rows = got.reshape(-1, 7)
    keys = [(r[0], r[1], -r[2]) for r in rows]
    assert keys == sorted(keys)
    # The intermediate blobs of the SSD layers agree with OpenCV too.
    names = ["norm1", "norm1_loc_perm", "mbox_priorbox", "mbox_conf_flatten"]
    for name, ref in opencv_outputs(proto, model, inputs, names).items():
        assert_close(ref, blobs[name], name)


# ---- DetectionOutput's options ------------------------------------------------------------------------------


def detection_output_ref(loc, conf, prior, classes: int, share: bool = True, background: int = 0,
                         code_type: int = 2, in_target: bool = False, top_k: int = -1, keep_top_k: int = -1,
                         nms: float = 0.45, threshold: float = -np.inf, clip: bool = False) -> np.ndarray:
    """detection_output_layer.cpp Forward_cpu with bbox_util.cpp's DecodeBBox, ApplyNMSFast (eta 1) and
    JaccardOverlap, restated in float64 loops; OpenCV's ``clip`` clips the decoded boxes."""
    n, p = loc.shape[0], prior.shape[2] // 4
    pri, var = prior[0, 0].reshape(p, 4).astype(np.float64), prior[0, 1].reshape(p, 4).astype(np.float64)
    if in_target:
        var = np.ones_like(var)
    loc = loc.reshape(n, p, 1 if share else classes, 4).astype(np.float64)
    conf = conf.reshape(n, p, classes).astype(np.float64)

    def decode(d, q, v):
        pw, ph = q[2] - q[0], q[3] - q[1]
        if code_type == 1:
            out = q + v * d
        elif code_type == 3:
            out = q + v * d * np.array([pw, ph, pw, ph])
        else:
            cx, cy = (q[0] + q[2]) / 2 + v[0] * d[0] * pw, (q[1] + q[3]) / 2 + v[1] * d[1] * ph
            w, h = np.exp(v[2] * d[2]) * pw, np.exp(v[3] * d[3]) * ph
            out = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        return np.clip(out, 0, 1) if clip else out

    rows = []
    for i in range(n):
        kept = {}
        for c in range(classes):
            if c == background:
                continue
            boxes = [decode(loc[i, j, 0 if share else c], pri[j], var[j]) for j in range(p)]
            order = sorted((j for j in range(p) if conf[i, j, c] > threshold), key=lambda j: -conf[i, j, c])
            order = order[:top_k] if top_k > -1 else order
            chosen = []
            for j in order:
                if all(iou(boxes[j], boxes[k]) <= nms for k in chosen):
                    chosen.append(j)
            kept[c] = [(conf[i, j, c], j, boxes[j]) for j in chosen]
        total = sum(len(v) for v in kept.values())
        if keep_top_k > -1 and total > keep_top_k:
            best = sorted(((s, c, j) for c, v in kept.items() for s, j, _ in v), key=lambda x: -x[0])[:keep_top_k]
            keep = {(c, j) for _, c, j in best}
            kept = {c: [x for x in v if (c, x[1]) in keep] for c, v in kept.items()}
        for c in sorted(kept):
            for s, _, box in kept[c]:
                rows.append([i, c, s, *box])
    if not rows:
        rows = [[i, -1, -1, -1, -1, -1, -1] for i in range(n)]
    return np.asarray(rows, dtype=np.float32).reshape(1, 1, -1, 7)


VARIANTS = {
    "no loc sharing": dict(share_location=False),
    "corner code": dict(detection="background_label_id: 0 nms_param { nms_threshold: 0.3 top_k: 50 } "
                                  "code_type: CORNER keep_top_k: 30 confidence_threshold: 0.2"),
    # (OpenCV needs keep_top_k and aborts on -1: a large one keeps all; -1 is checked against the restatement.)
    "no top_k, batch 2": dict(n=2, detection="background_label_id: 0 nms_param { nms_threshold: 0.5 } "
                                             "code_type: CENTER_SIZE keep_top_k: 5000 confidence_threshold: 0.3"),
    "background 2": dict(detection="background_label_id: 2 nms_param { nms_threshold: 0.45 top_k: 40 } "
                                   "code_type: CENTER_SIZE keep_top_k: 25 confidence_threshold: 0.25"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_detection_options_match_opencv(tmp_path, variant):
    proto, model, inputs = ssd_net(tmp_path, seed=3, **VARIANTS[variant])
    reference = opencv_detections(proto, model, inputs)
    assert reference.shape[2] > 5
    module = ninport.load(proto, model)
    assert_same_detections(reference, torch_blobs(module, inputs)["detection_out"], "torch")
    path = tmp_path / "ssd.onnx"
    ninport.export_onnx(module, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert_same_detections(reference, session.run(["detection_out"], inputs)[0], "onnxruntime")


def _onnx_detections(module, path: Path, inputs) -> np.ndarray:
    ninport.export_onnx(module, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["detection_out"], inputs)[0]


@pytest.mark.parametrize(("variant", "options", "ref_options"), [
    # OpenCV has no CORNER_SIZE: the numpy restatement is the reference.
    ("corner size", "nms_param { nms_threshold: 0.4 top_k: 30 } code_type: CORNER_SIZE keep_top_k: 15 "
                    "confidence_threshold: 0.2", dict(code_type=3, top_k=30, keep_top_k=15, nms=0.4, threshold=0.2)),
    # OpenCV's clip field: decoded boxes clipped to [0, 1].
    ("clip", "nms_param { nms_threshold: 0.45 top_k: 30 } code_type: CENTER_SIZE keep_top_k: 20 "
             "confidence_threshold: 0.2 clip: true", dict(top_k=30, keep_top_k=20, threshold=0.2, clip=True)),
    # OpenCV wants a one-channel prior blob with variance_encoded_in_target; Caffe takes the usual two.
    ("variance in target", "nms_param { nms_threshold: 0.45 top_k: 40 } code_type: CENTER_SIZE "
                           "variance_encoded_in_target: true keep_top_k: 20 confidence_threshold: 0.2",
     dict(in_target=True, top_k=40, keep_top_k=20, threshold=0.2)),
    # Caffe's defaults: no top_k, keep_top_k -1, no confidence threshold.
    ("defaults", "nms_param { nms_threshold: 0.3 } code_type: CENTER_SIZE", dict(nms=0.3)),
    # Nothing over the threshold: Caffe writes one row per image, (i, -1, ..., -1).
    ("nothing kept", "nms_param { nms_threshold: 0.45 } code_type: CENTER_SIZE confidence_threshold: 1",
     dict(threshold=1.0)),
])
def test_detection_options_match_the_fork_source(tmp_path, variant, options, ref_options):
    proto, model, inputs = ssd_net(tmp_path, seed=5, n=2, detection=options)
    module = ninport.load(proto, model)
    blobs = torch_blobs(module, inputs)
    reference = detection_output_ref(blobs["mbox_loc"], blobs["mbox_conf_flatten"], blobs["mbox_priorbox"],
                                     classes=4, **ref_options)
    if variant == "nothing kept":
        assert reference.shape == (1, 1, 2, 7) and reference[0, 0, 1, 0] == 1
    else:
        assert reference.shape[2] > 5
    assert_same_detections(reference, blobs["detection_out"], "torch")
    assert_same_detections(reference, _onnx_detections(module, tmp_path / "d.onnx", inputs), "onnxruntime")


def test_restatement_agrees_with_opencv(tiny):
    """The numpy restatement used above is itself checked against OpenCV on the default options."""
    _, proto, model, inputs = tiny
    blobs = torch_blobs(ninport.load(proto, model), inputs)
    reference = detection_output_ref(blobs["mbox_loc"], blobs["mbox_conf_flatten"], blobs["mbox_priorbox"],
                                     classes=4, top_k=60, keep_top_k=40, threshold=0.2)
    assert_same_detections(opencv_detections(proto, model, inputs), reference,
                           "restatement")


# ---- PriorBox, Normalize, Permute -------------------------------------------------------------------------------

# clip is always given: OpenCV clips by default, the fork does not (the default is checked against the restatement).
PRIOR_VARIANTS = {
    "auto step": "min_size: 4 max_size: 9 aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 "
                 "variance: 0.2 variance: 0.2",
    "step, offset 0, clip, one variance": "min_size: 5 aspect_ratio: 2 aspect_ratio: 3 flip: false clip: true "
                                          "variance: 0.1 step: 3 offset: 0",
    # OpenCV uses the image's size whatever img_h/img_w say: they are the image's here.
    "two sizes, img_size, step_h/w": "min_size: 3 min_size: 6 max_size: 7 max_size: 12 aspect_ratio: 2 "
                                     "img_h: 20 img_w: 24 step_h: 2 step_w: 3 variance: 0.2 clip: false",
    "duplicate ratios": "min_size: 4 aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 2 flip: true variance: 0.3 "
                        "clip: true",
}


def test_prior_box_matches_opencv(tmp_path):
    text = HEADER.format(n=1, h=20, w=24)
    text += layer("pool", "Pooling", ["data"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
    names = []
    for i, param in enumerate(PRIOR_VARIANTS.values()):
        text += layer(f"prior{i}", "PriorBox", ["pool", "data"], f"prior_box_param {{ {param} }}")
        names.append(f"prior{i}")
    proto, _ = write_net(tmp_path, text)
    inputs = {"data": np.zeros((1, 3, 20, 24), np.float32)}
    reference = opencv_outputs(proto, None, inputs, names)
    module = ninport.load(proto, None)
    blobs = torch_blobs(module, inputs)
    for name in names:
        assert blobs[name].shape == reference[name].shape, name
        assert_close(reference[name], blobs[name], name)
    # Folded: the ONNX graph computes nothing for the priors, they are stored values.
    assert not [n for n in _onnx_ops(module, tmp_path / "p.onnx") if n.op_type not in ("MaxPool", "Identity")]


def _onnx_ops(module, path: Path):
    import onnx

    ninport.export_onnx(module, path)
    return list(onnx.load(str(path)).graph.node)


def prior_box_ref(min_sizes, max_sizes, ratios, flip, feature_hw, image_hw) -> np.ndarray:
    """prior_box_layer.cpp Forward_cpu restated as its loops, box sizes through ``int`` as the fork writes
    (``int min_size_ = min_sizes_[s]``); automatic steps, offset 0.5, variance 0.1, no clip."""
    ars = [1.0]
    for ar in ratios:
        if all(abs(ar - a) >= 1e-6 for a in ars):
            ars += [ar, 1 / ar] if flip else [ar]
    (fh, fw), (ih, iw) = feature_hw, image_hw
    out = []
    for h in range(fh):
        for w in range(fw):
            cx, cy = (w + 0.5) * (iw / fw), (h + 0.5) * (ih / fh)
            for s, mn in enumerate(min_sizes):
                sizes = [(int(mn), int(mn))]
                if max_sizes:
                    side = np.sqrt(int(mn) * int(max_sizes[s]))
                    sizes.append((side, side))
                sizes += [(int(mn) * np.sqrt(a), int(mn) / np.sqrt(a)) for a in ars if abs(a - 1) >= 1e-6]
                for bw, bh in sizes:
                    out += [(cx - bw / 2) / iw, (cy - bh / 2) / ih, (cx + bw / 2) / iw, (cy + bh / 2) / ih]
    return np.stack([np.asarray(out), np.full(len(out), 0.1)])[None].astype(np.float32)


def test_prior_box_truncates_sizes_as_the_fork(tmp_path):
    # OpenCV keeps fractional sizes; the fork's loop reads them into an int: the restatement is the reference.
    text = HEADER.format(n=1, h=18, w=18)
    text += layer("pool", "Pooling", ["data"], "pooling_param { pool: MAX kernel_size: 3 stride: 3 }")
    text += layer("prior", "PriorBox", ["pool", "data"],
                  "prior_box_param { min_size: 4.7 max_size: 9.6 aspect_ratio: 2 flip: true }")
    proto, _ = write_net(tmp_path, text)
    blobs = torch_blobs(ninport.load(proto, None), {"data": np.zeros((1, 3, 18, 18), np.float32)})
    reference = prior_box_ref([4.7], [9.6], [2.0], True, (6, 6), (18, 18))
    assert_close(reference, blobs["prior"], "prior")
    # The truncation is visible: the first box of the first cell is 4 pixels wide, not 4.7 (and not clipped at
    # the image's edge, the fork's default).
    assert blobs["prior"][0, 0, 2] - blobs["prior"][0, 0, 0] == pytest.approx(4 / 18, rel=1e-6)


@pytest.mark.parametrize("shared", [True, False])
def test_normalize_and_permute_match_opencv(tmp_path, shared):
    rng = np.random.default_rng(7)
    text = HEADER.format(n=2, h=5, w=6)
    weights = []
    for across in (True, False):
        name = f"norm_{'across' if across else 'within'}"
        text += layer(name, "Normalize", ["data"], f"norm_param {{ across_spatial: {str(across).lower()} "
                      f"channel_shared: {str(shared).lower()} eps: 0.001 }}")
        scale = rng.uniform(0.5, 3, size=() if shared else (3,)).astype(np.float32)
        weights.append((name, "Normalize", [scale]))
    orders = {"perm_nhwc": "order: 0 order: 2 order: 3 order: 1", "perm_batch": "order: 1 order: 0 order: 3 order: 2"}
    if shared:  # OpenCV takes a partial order for the whole permutation (and refuses this one); Caffe completes it
        orders["perm_partial"] = "order: 0 order: 3"
    for name, order in orders.items():
        text += layer(name, "Permute", ["norm_within"], f"permute_param {{ {order} }}")
    proto, model = write_net(tmp_path, text, weights)
    inputs = {"data": rng.normal(size=(2, 3, 5, 6)).astype(np.float32)}
    # normalize_layer.cpp restated: x / sqrt(sum of squares + eps) over C, H, W (across) or over C, times the
    # scale. OpenCV is the reference where it can be: it cannot read the 0-axis blob of a shared scale, and
    # refuses a per-channel scale across space.
    x = inputs["data"].astype(np.float64)
    per_channel = (lambda s: s) if shared else (lambda s: s.reshape(1, -1, 1, 1))
    reference = {
        "norm_across": x / np.sqrt((x * x).sum(axis=(1, 2, 3), keepdims=True) + 0.001) * per_channel(weights[0][2][0]),
        "norm_within": x / np.sqrt((x * x).sum(axis=1, keepdims=True) + 0.001) * per_channel(weights[1][2][0]),
    }
    if not shared:
        cv_text = "".join(x for x in text.splitlines(True) if not x.startswith('layer { name: "norm_across"'))
        cv_proto, cv_model = write_net(tmp_path, cv_text, weights[1:], name="opencv")
        opencv = opencv_outputs(cv_proto, cv_model, inputs, ["norm_within", *orders])
        assert_close(opencv["norm_within"], reference["norm_within"], "restatement against OpenCV")
        reference.update(opencv)
    names = list(reference)
    module = ninport.load(proto, model)
    blobs = torch_blobs(module, inputs)
    for name in names:
        assert_close(reference[name], blobs[name], f"torch {name}")
    if shared:  # order 0, 3: the axes not named (1, 2) follow in their order.
        np.testing.assert_array_equal(blobs["perm_partial"], blobs["norm_within"].transpose(0, 3, 1, 2))
    path = tmp_path / "n.onnx"
    ninport.export_onnx(module, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    for name, got in zip(outputs, session.run(outputs, inputs)):
        if name in reference:
            assert_close(reference[name], got, f"onnxruntime {name}")


# ---- refusals ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("param", "expected"), [
    ("prior_box_param { min_size: 8 max_size: 6 }", "max_size must be greater than its min_size"),
    ("prior_box_param { max_size: 6 }", "needs min_size"),
    ("prior_box_param { min_size: 4 variance: 0.1 variance: 0.2 }", "Caffe takes 1 or 4"),
])
def test_bad_prior_box_is_one_line(tmp_path, run_cli, param, expected):
    text = HEADER.format(n=1, h=8, w=8) + layer("prior", "PriorBox", ["data", "data"], param)
    proto, _ = write_net(tmp_path, text)
    result = run_cli("inspect", str(proto))
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and expected in line and "'prior'" in line


def test_adaptive_nms_is_refused(tmp_path):
    proto, model, _ = ssd_net(tmp_path, detection="background_label_id: 0 nms_param { nms_threshold: 0.45 "
                                                  "eta: 0.9 } code_type: CENTER_SIZE keep_top_k: 10")
    with pytest.raises(NinportError, match="adaptive NMS"):
        ninport.load(proto, model)


def test_verify_compares_detections_as_sets(tiny):
    """OpenCV pads its rows with zeros and orders them by score, Caffe by label: ``verify`` compares the
    DetectionOutput top as a set of rows, so a faithful conversion passes and a moved box does not."""
    from ninport.caffe.ssd import detection_rows
    from ninport.verify import verify

    _, proto, model, inputs = tiny
    report = verify(proto, model, inputs["data"], reference="opencv", runtimes="onnxruntime", warn=lambda m: None)
    rows = [r for r in report.rows if r.blob == "detection_out"]
    assert {r.backend for r in rows} >= {"torch", "onnxruntime"} and report.ok
    a = np.array([[0, 2, 0.9, 0.1, 0.1, 0.5, 0.5], [0, 1, 0.8, 0.2, 0.2, 0.4, 0.4], [0, 0, 0, 0, 0, 0, 0]])
    assert detection_rows(a).reshape(-1, 7).tolist() == [a[1].tolist(), a[0].tolist()]
    b = a.copy()
    b[0, 3] += 0.01
    assert np.abs(detection_rows(a) - detection_rows(b)).max() == pytest.approx(0.01)


def test_published_mobilenet_ssd_matches_opencv(tmp_path):
    """chuanqi305's MobileNet-SSD deploy file as published (reference/zoo/mobilenet_ssd), seeded weights: the
    dialect is named, and the detections match OpenCV's as a set (torch; the ONNX path is the tiny net's)."""
    from ninport.caffe import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    proto = Path(__file__).resolve().parent.parent / "reference" / "zoo" / "mobilenet_ssd" / "deploy.prototxt"
    net = read_net(proto)
    assert net.dialects.names == ["SSD"]
    model = tmp_path / "mobilenet_ssd.caffemodel"
    write_seeded_caffemodel(net, model, seed=1)
    # At this input scale the seeded net scores 64 boxes over the file's threshold, none tied.
    inputs = {"data": np.random.default_rng(0).uniform(-2, 2, size=(1, 3, 300, 300)).astype(np.float32)}
    module = ninport.load(proto, model)
    blobs = torch_blobs(module, inputs)
    assert blobs["mbox_priorbox"].shape == (1, 2, 1917 * 4)
    reference = opencv_outputs(proto, model, inputs, ["mbox_priorbox", "mbox_conf_flatten"])
    for name, ref in reference.items():
        assert_close(ref, blobs[name], name)
    reference = opencv_detections(proto, model, inputs)
    assert reference.shape[2] > 20
    assert_same_detections(reference, blobs["detection_out"], "torch")
