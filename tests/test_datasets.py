"""Data set readers: each test writes a small file in the format people download, then reads it back.

Nothing is downloaded. Expected values are computed here from the arrays the test wrote, by the format's own
layout rules (CIFAR rows are R, G, B planes; SVHN's X is H×W×C×N with 10 for the digit 0; idx headers are
big-endian), and Caffe's transform by data_transformer.cpp's formula.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

from ninport.errors import NinportError, ParseError
from ninport.reproduce import datasets
from ninport.reproduce.datasets import GcnZca, Transform, global_contrast_normalize, load_dataset, open_dataset

RNG = np.random.default_rng(1234)


def _pickle(path, obj) -> None:
    # Protocol 2, as the Python 2 cPickle of the original CIFAR files; keys are byte strings.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(n: int, label_key: bytes, classes: int) -> dict:
    return {
        b"batch_label": b"testing batch",
        b"data": RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in RNG.integers(0, classes, size=n)],
    }


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10") / "cifar-10-batches-py"
    root.mkdir()
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = _cifar_batch(4, b"labels", 10)
    batches["test_batch"] = _cifar_batch(3, b"labels", 10)
    for name, batch in batches.items():
        _pickle(root / name, batch)
    _pickle(root / "batches.meta", {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                                                     b"frog", b"horse", b"ship", b"truck"]})
    return root, batches


def test_cifar10_layout_and_labels(cifar10_dir):
    root, batches = cifar10_dir
    ds = open_dataset("cifar10", root, "train")
    assert len(ds) == 20 and ds.array.shape == (20, 3, 32, 32) and ds.array.dtype == np.float32
    assert ds.labels.dtype == np.int64
    assert ds.class_names[0] == "airplane" and ds.channel_order == "RGB"
    first = batches["data_batch_1"][b"data"][0]
    # Row layout: 1024 red values, then 1024 green, then 1024 blue, each row-major 32×32.
    assert ds.array[0, 0, 0, 0] == first[0]
    assert ds.array[0, 0, 0, 5] == first[5]
    assert ds.array[0, 0, 1, 0] == first[32]
    assert ds.array[0, 1, 0, 0] == first[1024]
    assert ds.array[0, 2, 31, 31] == first[3071]
    expected_labels = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.labels, expected_labels)
    test_images, test_labels = load_dataset("cifar10", root, split="test")
    np.testing.assert_array_equal(test_images.reshape(3, -1), batches["test_batch"][b"data"].astype(np.float32))
    np.testing.assert_array_equal(test_labels, batches["test_batch"][b"labels"])


def test_cifar10_from_parent_folder_and_archive(cifar10_dir, tmp_path):
    root, batches = cifar10_dir
    from_parent, _ = load_dataset("cifar10", root.parent, split="test")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar-10-batches-py")
    from_tar, labels = load_dataset("cifar10", archive, split="test")
    np.testing.assert_array_equal(from_parent, from_tar)
    np.testing.assert_array_equal(labels, batches["test_batch"][b"labels"])


def test_cifar_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ParseError, match="refusing to load .*system"):
        open_dataset("cifar10", folder, "test")


def test_cifar10_missing_batches_named(tmp_path, cifar10_dir):
    root, batches = cifar10_dir
    partial = tmp_path / "partial"
    partial.mkdir()
    _pickle(partial / "data_batch_1", batches["data_batch_1"])
    with pytest.raises(ParseError, match="data_batch_2.*data_batch_5"):
        open_dataset("cifar10", partial, "train")
    with pytest.raises(ParseError, match="no test_batch"):
        open_dataset("cifar10", partial, "test")


def test_cifar100_fine_and_coarse(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    train = _cifar_batch(6, b"fine_labels", 100)
    train[b"coarse_labels"] = [v // 5 for v in train[b"fine_labels"]]
    test = _cifar_batch(2, b"fine_labels", 100)
    test[b"coarse_labels"] = [v // 5 for v in test[b"fine_labels"]]
    _pickle(root / "train", train)
    _pickle(root / "test", test)
    _pickle(root / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    fine = open_dataset("cifar100", root, "train")
    coarse = open_dataset("cifar100", root, "train", label="coarse")
    np.testing.assert_array_equal(fine.labels, train[b"fine_labels"])
    np.testing.assert_array_equal(coarse.labels, train[b"coarse_labels"])
    assert fine.num_classes == 100 and coarse.num_classes == 20 and coarse.class_names[3] == "s3"
    images, labels = load_dataset("cifar100", tmp_path, split="test")
    assert images.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(labels, test[b"fine_labels"])


def test_svhn_mat_layout_and_zero_label(tmp_path):
    from scipy.io import savemat

    x = RNG.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10], [3]], dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    images, labels = load_dataset("svhn", tmp_path, split="test")
    assert images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(labels, [0, 1, 9, 0, 3])
    for n, c, h, w in [(0, 0, 0, 0), (1, 2, 5, 7), (4, 1, 31, 30)]:
        assert images[n, c, h, w] == x[h, w, c, n]
    same, _ = load_dataset("svhn", tmp_path / "test_32x32.mat")  # a .mat file given directly
    np.testing.assert_array_equal(same, images)


def test_svhn_bad_labels(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "bad.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8), "y": np.array([[0]])})
    with pytest.raises(ParseError, match="1..10"):
        open_dataset("svhn", tmp_path / "bad.mat", "test")


def _idx(array: np.ndarray) -> bytes:
    # Magic: two zero bytes, 0x08 (unsigned byte), the number of dimensions; then each size, big-endian.
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_raw_and_gzip(tmp_path, gz):
    images = RNG.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, size=7, dtype=np.uint8)
    blobs = {"t10k-images-idx3-ubyte": _idx(images), "t10k-labels-idx1-ubyte": _idx(labels)}
    assert struct.unpack(">I", blobs["t10k-images-idx3-ubyte"][:4])[0] == datasets.MNIST_IMAGES_MAGIC
    assert struct.unpack(">I", blobs["t10k-labels-idx1-ubyte"][:4])[0] == datasets.MNIST_LABELS_MAGIC
    for name, data in blobs.items():
        if gz:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    got, got_labels = load_dataset("mnist", tmp_path, split="test")
    assert got.shape == (7, 1, 28, 28) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)


def test_mnist_bad_magic_and_truncation(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03" + b"\0" * 12)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(1, np.uint8)))
    with pytest.raises(ParseError, match="not an idx file"):
        open_dataset("mnist", tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((1, 28, 28), np.uint8))[:-10])
    with pytest.raises(ParseError, match="declares \\[1, 28, 28\\]"):
        open_dataset("mnist", tmp_path, "test")
    with pytest.raises(ParseError, match="no train-images"):
        open_dataset("mnist", tmp_path, "train")


def test_imagenet_folder_with_val_txt(tmp_path):
    import cv2

    red = np.zeros((300, 400, 3), np.uint8)
    red[:, :, 2] = 255  # OpenCV stores BGR: this is pure red
    gradient = (np.arange(200 * 180 * 3) % 251).astype(np.uint8).reshape(200, 180, 3)
    cv2.imwrite(str(tmp_path / "a.png"), red)
    cv2.imwrite(str(tmp_path / "b.png"), gradient)
    (tmp_path / "val.txt").write_text("a.png 7\nb.png 999\n")
    ds = open_dataset("imagenet", tmp_path, "val")
    assert len(ds) == 2 and list(ds.labels) == [7, 999] and ds.decoder == "opencv"
    batch = ds.images(0, 2)
    assert batch.shape == (2, 3, 256, 256) and ds.channel_order == "BGR"
    assert batch[0, 2].min() == 255 and batch[0, 0].max() == 0  # red lands in the last (R) plane of BGR
    expected = cv2.resize(gradient, (256, 256), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_array_equal(batch[1], expected.astype(np.float32))
    chunks = list(ds.batches(1))
    assert len(chunks) == 2 and chunks[1][1].tolist() == [999]


def test_imagenet_list_errors(tmp_path):
    (tmp_path / "val.txt").write_text("missing.JPEG 3\n")
    with pytest.raises(ParseError, match="not found, first .*missing.JPEG"):
        open_dataset("imagenet", tmp_path, "val")
    (tmp_path / "val.txt").write_text("x.JPEG three\n")
    with pytest.raises(ParseError, match="val.txt:1: label 'three'"):
        open_dataset("imagenet", tmp_path, "val")


def test_digits_fixed_split():
    from sklearn.datasets import load_digits

    train_x, train_y = load_dataset("digits", split="train")
    test_x, test_y = load_dataset("digits", split="test")
    assert train_x.shape == (1437, 1, 8, 8) and test_x.shape == (360, 1, 8, 8)
    assert train_y.dtype == np.int64 and train_x.dtype == np.float32
    order = np.random.default_rng(0).permutation(1797)
    bunch = load_digits()
    np.testing.assert_array_equal(train_x[:, 0], bunch.images[order[:1437]])
    np.testing.assert_array_equal(test_y, bunch.target[order[1437:]])
    again, _ = load_dataset("digits", split="train")
    np.testing.assert_array_equal(again, train_x)
    assert set(np.unique(test_y)) == set(range(10))


def test_dataset_name_and_path_errors(tmp_path):
    with pytest.raises(NinportError, match="valid: cifar10, cifar100, svhn, mnist, imagenet, digits"):
        open_dataset("stl10", tmp_path)
    with pytest.raises(NinportError, match="--data PATH is needed for cifar10"):
        open_dataset("cifar10")
    with pytest.raises(ParseError, match="no such file"):
        open_dataset("CIFAR-10", tmp_path / "nope")


# --------------------------------------------------------------------------------------------------------
# Caffe's transform_param


def test_transform_center_crop_mean_image_and_scale():
    image = np.arange(2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5)
    mean = np.full((2, 5, 5), 1.0, np.float32)
    mean[1, 1:4, 1:4] = 10.0
    out = Transform(crop_size=3, mean=mean, scale=0.5, phase="TEST")(image)
    # TEST crops at ((5 - 3) // 2, (5 - 3) // 2) = (1, 1); the mean image is cut at the same place.
    expected = (image[0, :, 1:4, 1:4] - mean[:, 1:4, 1:4]) * 0.5
    np.testing.assert_array_equal(out[0], expected)
    assert out[0, 1, 0, 0] == (image[0, 1, 1, 1] - 10.0) * 0.5


def test_transform_mean_values_and_mirror():
    image = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)
    t = Transform(mean=np.array([1.0, 2.0], np.float32))
    np.testing.assert_array_equal(t(image)[0], image[0] - np.array([1.0, 2.0]).reshape(2, 1, 1))
    flipped = t.crop(image, 0, 0, flip=True)
    np.testing.assert_array_equal(flipped[0, 0, 0], [2 - 1, 1 - 1, 0 - 1])
    one = Transform(mean=np.array([3.0], np.float32))(image)
    np.testing.assert_array_equal(one, image - 3.0)


def test_transform_train_crops_are_windows_of_the_image():
    image = RNG.random((4, 1, 8, 8)).astype(np.float32)
    out = Transform(crop_size=5, mirror=True, phase="TRAIN")(image, rng=np.random.default_rng(3))
    assert out.shape == (4, 1, 5, 5)
    for i in range(4):
        windows = [image[i, 0, t : t + 5, left : left + 5] for t in range(4) for left in range(4)]
        windows += [w[:, ::-1] for w in windows]
        assert any(np.array_equal(out[i, 0], w) for w in windows)


def test_transform_from_param_message_dict_and_mean_file(tmp_path):
    from ninport.caffe import caffe_pb2
    from ninport.caffe.caffemodel import write_binaryproto

    mean = RNG.random((1, 3, 6, 6)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    param = caffe_pb2.TransformationParameter(crop_size=4, mirror=False, scale=0.25, mean_file="mean.binaryproto")
    t = Transform.from_param(param, base_dir=tmp_path)
    assert t.crop_size == 4 and t.scale == 0.25 and t.mean.shape == (3, 6, 6)
    np.testing.assert_array_equal(t.mean, mean[0])
    d = Transform.from_param({"crop_size": 2, "mean_value": [104, 117, 123]}, phase="train")
    assert d.phase == "TRAIN" and d.mean.tolist() == [104, 117, 123]
    with pytest.raises(NinportError, match="cannot both"):
        Transform.from_param({"mean_file": "m", "mean_value": [1]})
    with pytest.raises(NinportError, match="mean image is \\[3, 6, 6\\]"):
        t(np.zeros((1, 3, 8, 8), np.float32))


# --------------------------------------------------------------------------------------------------------
# GCN + ZCA


def test_global_contrast_normalization():
    x = RNG.random((5, 3, 4, 4)).astype(np.float32) * 255
    out = global_contrast_normalize(x)
    flat = out.reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(flat.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=1), 55.0, rtol=1e-5)
    constant = global_contrast_normalize(np.full((1, 1, 2, 2), 7.0, np.float32))
    np.testing.assert_array_equal(constant, 0)  # zero norm: divided by 1, not by 0


def test_zca_matches_an_svd_restatement():
    train = RNG.random((40, 1, 3, 3)).astype(np.float32) * 255
    test = RNG.random((6, 1, 3, 3)).astype(np.float32) * 255
    z = GcnZca(bias=0.1).fit(train)
    got = z.apply(test).reshape(6, -1)
    # Independent: whitening matrix from the SVD of the centered, GCN'd training data.
    g = global_contrast_normalize(train).reshape(40, -1).astype(np.float64)
    m = g.mean(axis=0)
    _u, s, vt = np.linalg.svd(g - m, full_matrices=False)
    w = vt.T @ np.diag(1.0 / np.sqrt(s**2 / 40 + 0.1)) @ vt
    expected = (global_contrast_normalize(test).reshape(6, -1) - m) @ w
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_zca_with_fewer_images_than_values_matches_the_covariance_formula():
    # pylearn2's ZCA: eigh(cov + bias·I); W = V diag(1/sqrt(eig)) Vᵀ. Here 5 images of 12 values (rank-deficient).
    train = RNG.random((5, 3, 2, 2)).astype(np.float32) * 255
    test = RNG.random((3, 3, 2, 2)).astype(np.float32) * 255
    g = global_contrast_normalize(train).reshape(5, -1).astype(np.float64)
    m = g.mean(axis=0)
    eig, vec = np.linalg.eigh((g - m).T @ (g - m) / 5 + 0.1 * np.eye(12))
    w = vec @ np.diag(1.0 / np.sqrt(eig)) @ vec.T
    expected = (global_contrast_normalize(test).reshape(3, -1) - m) @ w
    got = GcnZca(bias=0.1).fit(train).apply(test).reshape(3, -1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_load_dataset_gcn_zca_fits_on_train(cifar10_dir):
    root, _ = cifar10_dir
    train, _ = load_dataset("cifar10", root, split="train")
    test, labels = load_dataset("cifar10", root, split="test", preprocess="gcn_zca")
    expected = GcnZca().fit(train).apply(load_dataset("cifar10", root, split="test")[0])
    np.testing.assert_allclose(test, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(NinportError, match="unknown preprocessing"):
        load_dataset("cifar10", root, split="test", preprocess="lcn")


def test_pickle_bytes_roundtrip_helper_is_python2_like():
    # The reader must accept byte-string keys and _codecs-encoded bytes (protocol 2 from Python 3).
    buf = io.BytesIO()
    pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}, buf, protocol=2)
    assert datasets._unpickle(buf.getvalue(), "mem")["labels"] == [1]
