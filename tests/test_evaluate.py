"""``ninport evaluate``: a tiny seeded Caffe net scored on a tiny CIFAR-format file the test writes.

The expected accuracies are computed here with onnxruntime directly on the arrays the test wrote, with Caffe's
TEST transform restated in numpy (center crop at ((32 - 28) // 2) = 2, (x - mean) * scale, as in
caffe/src/caffe/data_transformer.cpp) and classifier.py's 10-crop oversampling (caffe/python/caffe/io.py:
corners, center, then the same mirrored; the predictions averaged).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from ninport.errors import NinportError

PROTOTXT = """
name: "tiny_cifar"
layer {
  name: "data" type: "Data" top: "data" top: "label"
  include { phase: TEST }
  transform_param { crop_size: 28 mean_value: 120 mean_value: 110 mean_value: 100 scale: 0.0078125 }
  data_param { source: "cifar-test-lmdb" batch_size: 4 }
}
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 5 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "cccp1" type: "Convolution" bottom: "conv1" top: "cccp1"
  convolution_param { num_output: 10 kernel_size: 1 } }
layer { name: "pool" type: "Pooling" bottom: "cccp1" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pool" bottom: "label" top: "loss" }
"""
MEAN = np.array([120.0, 110.0, 100.0], np.float32).reshape(1, 3, 1, 1)
SCALE = 0.0078125
N = 40


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import onnxruntime as ort

    import ninport
    from ninport.caffe import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    root = tmp_path_factory.mktemp("evaluate")
    prototxt = root / "train_val.prototxt"
    prototxt.write_text(PROTOTXT)
    caffemodel = root / "tiny.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), caffemodel, layout="v2", seed=7)
    onnx_path = root / "tiny.onnx"
    ninport.export_onnx(ninport.load(prototxt, caffemodel), onnx_path)

    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, size=(N, 3072), dtype=np.uint8)
    images = data.astype(np.float32).reshape(N, 3, 32, 32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def scores(batch):
        return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0].reshape(len(batch), -1)

    center = scores((images[:, :, 2:30, 2:30] - MEAN) * SCALE)
    ten = np.zeros_like(center)
    for top, left in [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]:
        crop = (images[:, :, top : top + 28, left : left + 28] - MEAN) * SCALE
        ten += _softmax(scores(crop)) + _softmax(scores(crop[:, :, :, ::-1]))
    ranking = np.argsort(-center, axis=1, kind="stable")
    # Half the labels are the center-crop prediction (the expected top-1 is exactly 50 %); the other half are
    # the classes ranked 2nd..10th, so some fall inside the top 5 and some outside.
    rank = np.where(np.arange(N) < N // 2, 0, 1 + np.arange(N) % 9)
    labels = ranking[np.arange(N), rank]
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [int(v) for v in labels]}, f, protocol=2)

    def topk_hits(s, k):
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return int(np.sum(np.any(order == labels[:, None], axis=1)))

    expected = {
        "center_top1": topk_hits(center, 1), "center_top5": topk_hits(center, 5),
        "ten_top1": topk_hits(ten, 1), "ten_top5": topk_hits(ten, 5),
    }
    assert expected["center_top1"] == N // 2
    return {"root": root, "prototxt": prototxt, "caffemodel": caffemodel, "onnx": onnx_path, "data": folder,
            "expected": expected}


def test_center_crop_accuracy_matches_onnxruntime_by_hand(tiny):
    from ninport.reproduce.evaluate import evaluate

    result = evaluate([str(tiny["onnx"])], "cifar10", str(tiny["data"]), batch_size=7)
    assert result.count == N
    assert result.correct_top1 == tiny["expected"]["center_top1"] and result.top1 == pytest.approx(50.0)
    assert result.correct_top5 == tiny["expected"]["center_top5"]
    assert result.error == pytest.approx(50.0)
    # The declared transform_param travelled through the ONNX metadata.
    assert result.preprocessing["mean_value"] == [120.0, 110.0, 100.0] and result.preprocessing["scale"] == SCALE
    assert result.preprocessing["crop_size"] == 28


def test_ten_crops_match_oversampling_by_hand(tiny):
    from ninport.reproduce.evaluate import evaluate

    result = evaluate([str(tiny["onnx"])], "cifar10", str(tiny["data"]), crops="10", batch_size=16)
    assert result.correct_top1 == tiny["expected"]["ten_top1"]
    assert result.correct_top5 == tiny["expected"]["ten_top5"]


def test_prototxt_and_caffemodel_give_the_same_numbers(tiny):
    from ninport.reproduce.evaluate import evaluate

    result = evaluate([str(tiny["prototxt"]), str(tiny["caffemodel"])], "cifar10", str(tiny["data"]))
    assert result.correct_top1 == tiny["expected"]["center_top1"]
    assert result.correct_top5 == tiny["expected"]["center_top5"]


def test_cli_report_files_and_consistent_json(tiny, tmp_path, run_cli):
    out_dir = tmp_path / "report"
    result = run_cli("evaluate", tiny["onnx"], "--dataset", "cifar10", "--data", tiny["data"], "--compare",
                     "NIN + Dropout", "--output-dir", out_dir, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    for kind in ("md", "json", "png"):
        assert (out_dir / f"evaluation.{kind}").stat().st_size > 0
    assert (out_dir / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out_dir / "evaluation.json").read_text())
    assert saved["correct_top1"] == printed["correct_top1"] == tiny["expected"]["center_top1"]
    assert saved["top1_accuracy"] == pytest.approx(100.0 * saved["correct_top1"] / saved["count"])
    assert saved["top1_error"] == pytest.approx(100.0 - saved["top1_accuracy"])
    assert saved["top5_accuracy"] == pytest.approx(100.0 * saved["correct_top5"] / saved["count"])
    comparison = saved["comparison"]
    assert comparison["value"] == pytest.approx(10.41) and comparison["reproduced"] == pytest.approx(50.0)
    assert comparison["delta"] == pytest.approx(50.0 - 10.41) and comparison["verdict"] == "worse than the paper"
    # cifar10 rows: Table 1, Table 5 and the figures of the running text
    assert [r["method"] for r in saved["paper_rows"]][3] == "NIN + Dropout" and len(saved["paper_rows"]) == 15
    markdown = (out_dir / "evaluation.md").read_text()
    assert "| top-1 accuracy | 50.00 % (20 / 40) |" in markdown and "NIN + Dropout **(compared)**" in markdown
    assert "![reproduced vs paper](evaluation.png)" in markdown


def test_cli_text_output_and_limit(tiny, run_cli):
    result = run_cli("evaluate", tiny["onnx"], "--dataset", "cifar10", "--data", tiny["data"], "--limit", "10")
    assert result.exit_code == 0, result.output
    assert "cifar10 test: 10 images" in result.stdout
    assert "top-1 accuracy 100.00 %" in result.stdout  # the first 20 labels are the predictions


def test_mean_file_declared_but_missing_is_one_clear_error(tiny, tmp_path, write_prototxt, run_cli):
    from ninport.caffe import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    text = PROTOTXT.replace("mean_value: 120 mean_value: 110 mean_value: 100", 'mean_file: "/nowhere/mean.binaryproto"')
    prototxt = write_prototxt(text, name="mean_file.prototxt")
    caffemodel = tmp_path / "w.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), caffemodel, seed=1)
    result = run_cli("evaluate", prototxt, caffemodel, "--dataset", "cifar10", "--data", tiny["data"])
    assert result.exit_code == 1
    assert "mean file '/nowhere/mean.binaryproto'" in result.stderr and "--mean-values" in result.stderr
    ok = run_cli("evaluate", prototxt, caffemodel, "--dataset", "cifar10", "--data", tiny["data"],
                 "--mean-values", "120,110,100", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["preprocessing"]["mean_value"] == [120.0, 110.0, 100.0]


def test_bad_inputs(tiny):
    from ninport.reproduce.evaluate import evaluate

    with pytest.raises(NinportError, match="takes 3-channel input; the data has 1"):
        evaluate([str(tiny["onnx"])], "digits")
    with pytest.raises(NinportError, match="'resnet' is not a row for cifar10; valid: 'Stochastic Pooling'"):
        evaluate([str(tiny["onnx"])], "cifar10", str(tiny["data"]), compare_method="resnet")
    with pytest.raises(NinportError, match="no table for digits"):
        evaluate([str(tiny["onnx"])], "digits", compare_method="NIN + Dropout")
    with pytest.raises(NinportError, match="MODEL is one .onnx or .pt file"):
        evaluate([str(tiny["prototxt"])], "cifar10", str(tiny["data"]))


def test_nin_gist_on_an_imagenet_folder_agrees_with_opencv(nin_prototxt, nin_weights_v1, nin_deploy_prototxt,
                                                          tmp_path, run_cli):
    """The gist's train_val + V1 weights, converted in memory, against OpenCV's own Caffe reader on the deploy
    file: the images decoded and warped to 256×256 as create_imagenet.sh did, center crop 224, mean values."""
    import cv2

    rng = np.random.default_rng(5)
    names = []
    for i, (h, w) in enumerate([(300, 260), (256, 256), (331, 400)]):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"val_{i}.png"), image)
        names.append(f"val_{i}.png")
    net = cv2.dnn.readNetFromCaffe(str(nin_deploy_prototxt), str(nin_weights_v1))
    mean = np.array([104.0, 117.0, 123.0], np.float32).reshape(1, 3, 1, 1)
    crops = []
    for name in names:
        warped = cv2.resize(cv2.imread(str(tmp_path / name)), (256, 256), interpolation=cv2.INTER_LINEAR)
        crops.append(warped.transpose(2, 0, 1)[None, :, 16:240, 16:240].astype(np.float32) - mean)
    net.setInput(np.concatenate(crops))
    scores = net.forward("pool4").reshape(3, -1)
    top = np.sort(scores, axis=1)[:, -2:]
    assert np.all(top[:, 1] - top[:, 0] > 1e-3 * np.abs(scores).max())  # no near-tie for float noise to flip
    predicted = scores.argmax(axis=1)
    labels = [int(predicted[0]), int(predicted[1]), int((predicted[2] + 1) % 1000)]
    (tmp_path / "val.txt").write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels)))

    result = run_cli("evaluate", nin_prototxt, nin_weights_v1, "--dataset", "imagenet", "--data", tmp_path,
                     "--mean-values", "104,117,123", "--compare", "nin", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["split"] == "val" and out["count"] == 3 and out["correct_top1"] == 2
    assert out["preprocessing"]["crop_size"] == 224 and out["preprocessing"]["image_size"] == [3, 256, 256]
    assert out["comparison"]["metric"] == "top-1 accuracy %"
    assert out["comparison"]["reproduced"] == pytest.approx(200 / 3, abs=1e-4)


DATA_NET = """
name: "d"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: 0.5 {crop} }}
  data_param {{ source: "{source}" batch_size: 3 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 2 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


@pytest.mark.parametrize("source, crop, shape", [
    ("digits", "", (3, 1, 8, 8)),
    ("mnist:data/mnist", "", (3, 1, 28, 28)),
    ("cifar10:cifar-10-batches-py?preprocess=gcn_zca", "", (3, 3, 32, 32)),
    ("CIFAR-100:x?label=coarse", "crop_size: 24", (3, 3, 24, 24)),
    ("svhn:test_32x32.mat", "", (3, 3, 32, 32)),
    ("imagenet:val", "crop_size: 224", (3, 3, 224, 224)),
])
def test_a_data_layer_naming_a_known_data_set_gives_the_input_shape(tmp_path, source, crop, shape):
    from ninport.caffe import read_net

    path = tmp_path / "net.prototxt"
    path.write_text(DATA_NET.format(source=source, crop=crop))
    net = read_net(path)
    assert net.inputs == {"data": shape}
    assert net.preprocess["scale"] == 0.5


def test_known_shapes_agree_with_the_data_set_reader():
    from ninport.caffe.upgrade import DATA_SET_SHAPES
    from ninport.reproduce.datasets import DATASETS, open_dataset

    assert set(DATA_SET_SHAPES) == set(DATASETS) - {"imagenet"}
    assert DATA_SET_SHAPES["digits"] == tuple(open_dataset("digits", None, "test").image_shape)


@pytest.mark.parametrize("source", ["cifar-test-lmdb", "imagenet:val", "examples/mnist/mnist_test_lmdb"])
def test_other_sources_still_need_an_input_shape(tmp_path, source):
    from ninport.caffe import read_net
    from ninport.errors import NetError

    path = tmp_path / "net.prototxt"
    path.write_text(DATA_NET.format(source=source, crop=""))
    with pytest.raises(NetError, match="cannot tell the input shape"):
        read_net(path)
