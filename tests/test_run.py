"""``ninport run`` on images the test writes: the same top-k as running the ONNX file by hand on the
preprocessed tensor (resize to 256, center crop, BGR, mean subtracted), computed here without ninport."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from ninport.convert import convert

MEAN = (104.0, 117.0, 123.0)


@pytest.fixture(scope="module")
def nin_onnx(tmp_path_factory, nin_prototxt, nin_weights_v1):
    out = tmp_path_factory.mktemp("run") / "nin.onnx"
    return convert(nin_prototxt, nin_weights_v1, out).onnx_path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w, ext) in enumerate([(300, 400, "png"), (256, 256, "jpg"), (480, 320, "png")]):
        # smooth colour fields with noise, so resizing matters and classes differ between images
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (i + 1)) % 256, (yy * (3 - i)) % 256, (xx + yy) % 256], axis=-1)
        noise = rng.integers(0, 40, (h, w, 3))
        img = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"img{i}.{ext}"
        Image.fromarray(img).save(path, quality=95)
        paths.append(path)
    return paths


def preprocess_by_hand(path) -> np.ndarray:
    img = Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32)[:, :, ::-1]  # BGR
    a = a[16:240, 16:240].transpose(2, 0, 1)  # centre 224 crop, CHW
    return (a - np.array(MEAN, dtype=np.float32).reshape(3, 1, 1))[None]


def test_run_top_k_matches_manual(run_cli, nin_onnx, image_files):
    args = ["run", nin_onnx, *map(str, image_files), "--top-k", "5", "--mean-values", ",".join(map(str, MEAN)),
            "--json", "--batch-size", "2"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["provider"] == "cpu" or report["provider"] == "cuda"
    session = ort.InferenceSession(nin_onnx, providers=["CPUExecutionProvider"])
    tops = []
    for path, item in zip(image_files, report["results"]):
        (scores,) = session.run(["pool4"], {"data": preprocess_by_hand(path)})
        expected = list(np.argsort(-scores.reshape(-1))[:5])
        assert [e["class"] for e in item["top_k"]] == expected, path
        np.testing.assert_allclose([e["score"] for e in item["top_k"]], scores.reshape(-1)[expected], rtol=1e-4)
        tops.append(expected[0])
    assert len(report["results"]) == len(image_files)


def test_run_labels_and_npy(run_cli, nin_onnx, image_files, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class number {i}\n" for i in range(1000)))
    tensor = tmp_path / "x.npy"
    np.save(tensor, preprocess_by_hand(image_files[0]))
    result = run_cli(*["run", nin_onnx, str(tensor), "--labels", str(labels), "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    item = json.loads(result.stdout)["results"][0]
    assert item["top_k"][0]["label"] == f"class number {item['top_k'][0]['class']}"
    session = ort.InferenceSession(nin_onnx, providers=["CPUExecutionProvider"])
    (scores,) = session.run(["pool4"], {"data": np.load(tensor)})
    assert item["top_k"][0]["class"] == int(np.argmax(scores))


def test_run_text_output_and_missing_mean_warning(run_cli, nin_onnx, image_files):
    result = run_cli(*["run", nin_onnx, str(image_files[0]), "--top-k", "1"])
    assert result.exit_code == 0
    assert "provider: cpu" in result.stdout
    # The gist's mean file path is from the author's machine: say so rather than guess.
    assert "imagenet-train-mean" in result.stderr and "not here" in result.stderr


def test_run_bad_input(run_cli, nin_onnx, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    result = run_cli(*["run", nin_onnx, str(bad)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert str(bad) in result.stderr
