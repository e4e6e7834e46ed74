"""``ninport train``: the bundled digits NiN to ≥ 95 %, its snapshot in OpenCV, resume, --nproc 2, data sources.

The accuracy ninport reports is checked against OpenCV's Caffe reader running the written snapshot on the
held-out digits; snapshots are compared with ``ninport convert`` of the same files; resume and data-parallel
runs are compared with an uninterrupted single-process run.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from ninport.caffe import caffe_pb2
from ninport.caffe.caffemodel import blob_to_array, read_caffemodel
from ninport.reproduce.solver import read_state
from ninport.reproduce.train import (
    accuracy,
    parse_source,
    snapshot_prefix,
    softmax_loss,
    train,
)

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "reference" / "nin_digits"
CIFAR = REPO / "reference" / "nin_cifar10"


def digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits as the reader documents them: default_rng(0) permutation, the last 360."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))[1437:]
    return bunch.images[order][:, None].astype(np.float32), bunch.target[order]


def weights_of(caffemodel: str | Path) -> dict[str, list[np.ndarray]]:
    model = read_caffemodel(caffemodel)
    return {layer.name: [blob_to_array(b) for b in layer.blobs] for layer in model.layer}


def assert_same_weights(a: dict, b: dict, atol_scale: float) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(x, y, atol=atol_scale * max(1.0, float(np.abs(y).max())), err_msg=name)


# --------------------------------------------------------------------------------------------------------
# The bundled solver, run to completion once for the module


@pytest.fixture(scope="module")
def digits_run(run_cli, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("nin_digits_run")
    result = run_cli("train", DIGITS / "solver.prototxt", "--output-dir", out, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), out


def test_reference_digits_reaches_95_percent(digits_run) -> None:
    metrics, out = digits_run
    assert metrics["iterations"] == 1000
    assert metrics["test_accuracy"] >= 0.95
    assert metrics["snapshot"] == str(out / "nin_digits_iter_1000.caffemodel")
    assert [Path(p).name for p in metrics["snapshots"]] == ["nin_digits_iter_500.caffemodel",
                                                            "nin_digits_iter_1000.caffemodel"]
    assert (out / "nin_digits_iter_1000.solverstate").is_file()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "phase,iter,name,value"
    tests = [r for r in rows if r.startswith("test,") and ",accuracy," in r]
    assert [int(r.split(",")[1]) for r in tests] == [0, 200, 400, 600, 800, 1000]  # test_interval 200


def test_snapshot_in_opencv_matches_convert_and_the_reported_accuracy(digits_run, run_cli, tmp_path: Path) -> None:
    import cv2
    import onnxruntime as ort

    metrics, out = digits_run
    deploy, model = out / "deploy.prototxt", Path(metrics["snapshot"])
    images, labels = digits_test_split()
    x = images * np.float32(0.0625)  # the data layer's transform_param scale
    net = cv2.dnn.readNetFromCaffe(str(deploy), str(model))
    net.setInput(x)
    from_cv = net.forward().reshape(len(x), -1)
    converted = run_cli("convert", deploy, model, "-o", tmp_path / "digits.onnx", "--json")
    assert converted.exit_code == 0, converted.stderr
    session = ort.InferenceSession(str(tmp_path / "digits.onnx"), providers=["CPUExecutionProvider"])
    from_ort = session.run(None, {"data": x})[0].reshape(len(x), -1)
    np.testing.assert_allclose(from_ort, from_cv, atol=1e-5 * float(np.abs(from_cv).max()))
    # The test net's accuracy over the 360 held-out digits, recomputed from OpenCV's scores.
    assert float((from_cv.argmax(1) == labels).mean()) == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_deploy_prototxt_is_the_plain_deploy_view(digits_run) -> None:
    _, out = digits_run
    text = (out / "deploy.prototxt").read_text()
    message = text_format.Parse(text, caffe_pb2.NetParameter())
    types = [layer.type for layer in message.layer]
    assert types[0] == "Input" and list(message.layer[0].input_param.shape[0].dim) == [1, 1, 8, 8]
    assert not {"Data", "SoftmaxWithLoss", "Accuracy"} & set(types)
    assert "@" not in text and "include" not in text  # Caffe's own blob names, no phase rules
    relu = next(layer for layer in message.layer if layer.name == "relu_conv1")
    assert list(relu.bottom) == list(relu.top) == ["conv1"]  # in place, as in train_val.prototxt


# --------------------------------------------------------------------------------------------------------
# The preprocessing travels: train -> deploy.prototxt -> convert -> ONNX metadata -> evaluate / run


def test_deploy_input_keeps_the_data_layers_transform(digits_run) -> None:
    _, out = digits_run
    message = text_format.Parse((out / "deploy.prototxt").read_text(), caffe_pb2.NetParameter())
    data = message.layer[0]
    assert data.type == "Input" and data.HasField("transform_param")
    assert data.transform_param.scale == pytest.approx(0.0625)


def test_train_convert_evaluate_round_trip_keeps_the_accuracy(digits_run, run_cli, tmp_path: Path) -> None:
    # With no option typed by hand, evaluate scores the held-out digits exactly as train's test net did.
    import onnx

    metrics, out = digits_run
    model = metrics["snapshot"]
    expected = round(metrics["test_accuracy"] * 360)
    assert expected / 360 == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    scored = {}
    for name, prototxt in (("deploy", out / "deploy.prototxt"), ("train_val", DIGITS / "train_val.prototxt")):
        onnx_path = tmp_path / f"{name}.onnx"
        converted = run_cli("convert", prototxt, model, "-o", onnx_path, "--json")
        assert converted.exit_code == 0, converted.stderr
        meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
        assert json.loads(meta["preprocess_scale"]) == pytest.approx(0.0625), name
        for what, args in ((f"{name}.onnx", [onnx_path]), (f"{name} + caffemodel", [prototxt, model])):
            result = run_cli("evaluate", *args, "--dataset", "digits", "--json")
            assert result.exit_code == 0, result.stderr
            scored[what] = json.loads(result.stdout)
    for what, report in scored.items():
        assert report["count"] == 360, what
        assert report["correct_top1"] == expected, (what, report["correct_top1"], expected)
        assert report["top1_accuracy"] == pytest.approx(100.0 * metrics["test_accuracy"], abs=1e-4), what
    # The declared transform is what made the difference: without it the same model scores the raw 0..16 values.
    raw = run_cli("evaluate", tmp_path / "deploy.onnx", "--dataset", "digits", "--scale", "1", "--json")
    assert json.loads(raw.stdout)["correct_top1"] != expected


def test_run_applies_the_declared_scale_to_images(digits_run, run_cli, tmp_path: Path) -> None:
    import onnxruntime as ort
    from PIL import Image

    metrics, out = digits_run
    onnx_path = tmp_path / "d.onnx"
    assert run_cli("convert", out / "deploy.prototxt", metrics["snapshot"], "-o", onnx_path).exit_code == 0
    images, _ = digits_test_split()
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(images[i, 0].astype(np.uint8), mode="L").save(paths[-1])  # values 0..16, exact
    result = run_cli("run", onnx_path, *paths, "--top-k", "1", "--json")
    assert result.exit_code == 0, result.stderr
    got = [r["top_k"][0] for r in json.loads(result.stdout)["results"]]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"data": images[:6] * np.float32(0.0625)})[0].reshape(6, -1)
    assert [g["class"] for g in got] == list(scores.argmax(1))
    np.testing.assert_allclose([g["score"] for g in got], scores.max(1), rtol=1e-5)


# --------------------------------------------------------------------------------------------------------
# Solvers written by the tests around the reference net


def write_solver(directory: Path, net_text: str, **fields) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "net.prototxt").write_text(net_text)
    lines = ['net: "net.prototxt"', "momentum: 0.9", "weight_decay: 0.0005", 'snapshot_prefix: "run"',
             "random_seed: 3"]
    lines += [f"{k}: {json.dumps(v) if isinstance(v, str) else v}" for k, v in fields.items()]
    path = directory / "solver.prototxt"
    path.write_text("\n".join(lines) + "\n")
    return path


def reference_net(batch: int | None = None, dropout: bool = True) -> str:
    text = (DIGITS / "train_val.prototxt").read_text()
    if batch is not None:
        text = text.replace("batch_size: 64", f"batch_size: {batch}")
    if not dropout:
        text = re.sub(r'layer \{\n  name: "drop\d".*?\n\}\n', "", text, flags=re.S)
        assert "Dropout" not in text
    return text


def test_resume_continues_identically(tmp_path: Path) -> None:
    # multistep changes the rate in the second half: the restored current_step matters.
    fields = dict(base_lr=0.05, lr_policy="multistep", gamma=0.5, stepvalue=9, max_iter=12, snapshot=6,
                  test_iter=1, test_interval=4)
    solver = write_solver(tmp_path / "a", reference_net(batch=16), **fields)
    whole = train(solver, output_dir=tmp_path / "whole")
    half = tmp_path / "whole" / "run_iter_6.caffemodel"
    assert half.is_file()
    resumed = train(solver, output_dir=tmp_path / "resumed", resume=half)  # finds run_iter_6.solverstate
    assert resumed["start_iteration"] == 6 and resumed["iterations"] == 12
    a, b = weights_of(whole["snapshot"]), weights_of(resumed["snapshot"])
    assert_same_weights(a, b, 1e-6)
    state_a, state_b = read_state(whole["solverstate"]), read_state(resumed["solverstate"])
    assert state_a.current_step == state_b.current_step == 1
    for ha, hb in zip(state_a.history, state_b.history):
        np.testing.assert_allclose(blob_to_array(hb), blob_to_array(ha), atol=1e-6)
    assert resumed["test_accuracy"] == pytest.approx(whole["test_accuracy"], abs=1e-6)
    # Resuming is not a no-op: the second half moved the weights.
    middle = weights_of(half)
    assert float(np.abs(middle["conv1"][0] - a["conv1"][0]).max()) > 1e-4


def test_nproc_2_matches_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    fields = dict(base_lr=0.05, lr_policy="fixed", max_iter=3, iter_size=2)
    one = train(write_solver(tmp_path / "one", reference_net(batch=32, dropout=False), **fields),
                output_dir=tmp_path / "one_out")
    two = train(write_solver(tmp_path / "two", reference_net(batch=16, dropout=False), **fields),
                output_dir=tmp_path / "two_out", nproc=2)
    assert one["global_batch"] == two["global_batch"] == 64 and two["nproc"] == 2
    a, b = weights_of(one["snapshot"]), weights_of(two["snapshot"])
    assert_same_weights(b, a, 1e-5)
    # The weights moved from their initial values by much more than the tolerance.
    init = tmp_path / "init"
    zero = train(write_solver(init, reference_net(batch=32, dropout=False), **{**fields, "base_lr": 0.0}),
                 output_dir=init / "out")
    assert float(np.abs(weights_of(zero["snapshot"])["conv1"][0] - a["conv1"][0]).max()) > 1e-3


# --------------------------------------------------------------------------------------------------------
# The paper's CIFAR-10 NiN: its architecture, trainable on CIFAR-10's python batches


def write_cifar(folder: Path, per_batch: int = 4) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_reference_is_the_papers_net_and_trains(tmp_path: Path) -> None:
    from ninport.caffe.load import read_net

    net = read_net(CIFAR / "train_val.prototxt", input_shape="1,3,32,32")
    convs = [(layer.name, layer.param.convolution_param.num_output, layer.param.convolution_param.kernel_size[0])
             for layer in net.layers if layer.type == "Convolution"]
    assert [(n, k) for _, n, k in convs] == [(192, 5), (160, 1), (96, 1), (192, 5), (192, 1), (192, 1),
                                             (192, 3), (192, 1), (10, 1)]
    pools = [(layer.param.pooling_param.pool, layer.param.pooling_param.kernel_size,
              layer.param.pooling_param.stride) for layer in net.layers if layer.type == "Pooling"]
    P = caffe_pb2.PoolingParameter
    assert pools == [(P.MAX, 3, 2), (P.AVE, 3, 2), (P.AVE, 8, 1)]
    assert [layer.type for layer in net.layers].count("Dropout") == 2
    from ninport.caffe.shapes import infer_shapes

    assert infer_shapes(net).blobs["pool3"] == (1, 10, 1, 1)  # 32 → 16 → 8 → 1: global on the 8×8 maps

    data = tmp_path / "cifar-10-batches-py"
    write_cifar(data)
    text = (CIFAR / "train_val.prototxt").read_text()
    text = text.replace("cifar10:cifar-10-batches-py?preprocess=gcn_zca", f"cifar10:{data}")
    text = re.sub(r"batch_size: \d+", "batch_size: 2", text)
    solver_text = (CIFAR / "solver.prototxt").read_text()
    for key, value in (("max_iter", 1), ("test_iter", 1), ("test_interval", 1), ("snapshot", 0)):
        solver_text = re.sub(rf"^{key}: \d+.*$", f"{key}: {value}", solver_text, flags=re.M)
    (tmp_path / "train_val.prototxt").write_text(text)
    (tmp_path / "solver.prototxt").write_text(solver_text + "random_seed: 0\n")
    metrics = train(tmp_path / "solver.prototxt", output_dir=tmp_path / "out", device="cpu")
    assert metrics["iterations"] == 1 and np.isfinite(metrics["train_loss"])
    layers = weights_of(metrics["snapshot"])
    assert [a.shape for a in layers["cccp6"]] == [(10, 192, 1, 1), (10,)]


# --------------------------------------------------------------------------------------------------------
# Data sources, prefixes, loss and accuracy


def test_parse_source() -> None:
    assert parse_source("digits") == ("digits", None, {})
    assert parse_source("cifar10:~/data/c10?preprocess=gcn_zca&split=train") == (
        "cifar10", "~/data/c10", {"preprocess": "gcn_zca", "split": "train"})


def test_an_lmdb_source_is_one_clear_line(tmp_path: Path, run_cli) -> None:
    text = reference_net().replace('source: "digits"', 'source: "examples/mnist/mnist_train_lmdb"')
    solver = write_solver(tmp_path, text, base_lr=0.01, lr_policy="fixed", max_iter=2)
    result = run_cli("train", solver, "--output-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "data layer 'data'" in result.stderr and "mnist_train_lmdb" in result.stderr
    assert "LMDB" in result.stderr and "digits" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written for a run that never started


def test_snapshot_prefix_rules(tmp_path: Path) -> None:
    p = caffe_pb2.SolverParameter(snapshot_prefix="models/nin/nin_train")
    assert snapshot_prefix(p, "solver.prototxt", None) == "models/nin/nin_train"
    assert snapshot_prefix(p, "solver.prototxt", "out") == "out/nin_train"
    # No prefix: the solver's path without its extension (upgrade_proto.cpp, UpgradeSnapshotPrefixProperty).
    assert snapshot_prefix(caffe_pb2.SolverParameter(), "cfg/solver.prototxt", None) == "cfg/solver"
    p = caffe_pb2.SolverParameter(snapshot_prefix=str(tmp_path) + "/")
    assert snapshot_prefix(p, "cfg/solver.prototxt", None) == str(tmp_path / "solver")


def layer(text: str):
    from ninport.caffe.net import Layer

    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return Layer(param.name, param.type, list(param.bottom), list(param.top), param)


def test_softmax_loss_normalizations_and_ignore_label() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 4, 2)).astype(np.float32)  # N=3, C=4, one spatial axis of 2
    labels = np.array([[0, 3], [2, 2], [1, 0]])
    logp = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    picked = np.take_along_axis(logp, labels[:, None, :], 1)[:, 0]  # 3×2
    keep = labels != 2
    for mode, normalizer in (("VALID", keep.sum()), ("FULL", 6), ("BATCH_SIZE", 3), ("NONE", 1)):
        lay = layer(f"name: 'loss' type: 'SoftmaxWithLoss' loss_param {{ ignore_label: 2 normalization: {mode} }}")
        got = softmax_loss(lay, torch.from_numpy(scores), torch.from_numpy(labels))
        assert float(got) == pytest.approx(-(picked * keep).sum() / normalizer, rel=1e-5), mode
    legacy = layer("name: 'loss' type: 'SoftmaxWithLoss' loss_param { normalize: false }")
    assert float(softmax_loss(legacy, torch.from_numpy(scores), torch.from_numpy(labels))) == pytest.approx(
        -picked.sum() / 3, rel=1e-5)


def test_accuracy_top_k_counts_ties_against() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [0.9, 0.1, 0.3, 0.2], [0.3, 0.3, 0.1, 0.0]])
    labels = torch.tensor([1, 2, 0])
    top1 = layer("name: 'a' type: 'Accuracy'")
    top2 = layer("name: 'a' type: 'Accuracy' accuracy_param { top_k: 2 }")
    # item 0: class 2 ties class 1, so 1 is not top-1 but is top-2; item 1: label 2 ranks second;
    # item 2: class 1 ties class 0, so 0 is top-2 only.
    assert float(accuracy(top1, scores, labels)) == pytest.approx(0.0)
    assert float(accuracy(top2, scores, labels)) == pytest.approx(1.0)
    ignoring = layer("name: 'a' type: 'Accuracy' accuracy_param { ignore_label: 0 top_k: 2 }")
    assert float(accuracy(ignoring, scores, torch.tensor([1, 0, 0]))) == pytest.approx(1.0)
