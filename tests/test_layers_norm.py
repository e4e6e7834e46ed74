"""BatchNorm and MVN with Caffe's arithmetic: hand-checkable cases for each quirk (BatchNorm's scale-factor
blob, 0.999 and 0; MVN's eps added to the standard deviation), then random cases in torch, onnxruntime and
OpenCV's Caffe importer against numpy restatements of batch_norm_layer.cpp and mvn_layer.cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_layers_harness import LayerNet, assert_close, check_backends, input_header, layer_text

import ninport
from ninport.errors import NinportError

SHAPE = (2, 3, 4, 5)


def normal(shape=SHAPE, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale + shift).astype(np.float32)


# ---- BatchNorm ------------------------------------------------------------------------------------------------


def batch_norm_ref(x: np.ndarray, mean_blob, var_blob, factor_blob, eps: float) -> np.ndarray:
    """batch_norm_layer.cpp, Forward_cpu with use_global_stats: the stored mean and variance times
    (factor == 0 ? 0 : 1 / factor), then (x - mean) / sqrt(variance + eps) per channel (axis 1)."""
    factor = 0.0 if factor_blob[0] == 0 else 1.0 / factor_blob[0]
    n = x.shape[0]
    c = x.shape[1] if x.ndim > 1 else 1
    view = x.reshape(n, c, -1)
    mean = (np.asarray(mean_blob) * factor).reshape(1, c, 1)
    var = (np.asarray(var_blob) * factor).reshape(1, c, 1)
    return ((view - mean) / np.sqrt(var + eps)).reshape(x.shape)


def batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """batch_norm_layer.cpp without use_global_stats: per-channel mean and (biased) variance of the batch."""
    view = x.reshape(x.shape[0], x.shape[1], -1)
    mean = view.mean(axis=(0, 2))
    var = ((view - mean.reshape(1, -1, 1)) ** 2).mean(axis=(0, 2))
    return mean, var


def bn_net(tmp_path: Path, shape, blobs, param: str = "") -> LayerNet:
    text = input_header(data=shape) + layer_text("bn", "BatchNorm", ["data"], ["bn"], param)
    return LayerNet(tmp_path, text, blobs=[("bn", "BatchNorm", blobs)])


def test_batch_norm_scale_factor_0999_by_hand(tmp_path: Path):
    # Stored sums for mean (1, -2) and variance (4, 0.25) after Caffe's moving average reached 0.999:
    # blobs hold 0.999 × each. Dividing gives back (1, -2) and (4, 0.25); with eps 0,
    # channel 0: (3 - 1) / 2 = 1, (5 - 1) / 2 = 2; channel 1: (-1.5 + 2) / 0.5 = 1, (-2 + 2) / 0.5 = 0.
    blobs = [np.array([0.999, -1.998]), np.array([3.996, 0.24975]), np.array([0.999])]
    net = bn_net(tmp_path, (1, 2, 1, 2), blobs, "batch_norm_param { eps: 0 }")
    x = np.array([[[[3.0, 5.0]], [[-1.5, -2.0]]]], dtype=np.float32)
    expected = np.array([[[[1.0, 2.0]], [[1.0, 0.0]]]])
    # Not dividing by the factor would be off by ~1e-3 here, a hundred times the tolerance.
    assert np.abs(batch_norm_ref(x, [0.999, -1.998], [3.996, 0.24975], [1.0], 0.0) - expected).max() > 5e-4
    check_backends(net, {"data": x}, [expected], opencv=True)


def test_batch_norm_scale_factor_zero_by_hand(tmp_path: Path):
    # A factor of 0 (a net saved before any training step) makes Caffe use 0 for mean and variance, whatever
    # the other blobs hold: top = x / sqrt(0 + eps) = 100 x with eps 1e-4. Dividing by the factor would give
    # inf or nan.
    blobs = [np.array([5.0, 7.0]), np.array([3.0, 9.0]), np.array([0.0])]
    net = bn_net(tmp_path, (1, 2, 1, 1), blobs, "batch_norm_param { eps: 0.0001 }")
    x = np.array([[[[1.0]], [[-2.0]]]], dtype=np.float32)
    check_backends(net, {"data": x}, [np.array([[[[100.0]], [[-200.0]]]])], opencv=True)


@pytest.mark.parametrize("in_place", [False, True], ids=["separate", "in_place"])
@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("shape", [SHAPE, (4, 6), (2, 3, 7)], ids=["4d", "2d", "3d"])
def test_batch_norm_seeded(tmp_path: Path, shape, eps, in_place: bool):
    # A TanH in front gives the BatchNorm a computed bottom, so in_place writes over a real intermediate blob.
    top = "feat" if in_place else "bn"
    param = f"batch_norm_param {{ eps: {eps} }}" if eps is not None else ""
    text = (input_header(data=shape) + layer_text("pre", "TanH", ["data"], ["feat"])
            + layer_text("bn", "BatchNorm", ["feat"], [top], param))
    rng = np.random.default_rng(7)
    c = shape[1]
    factor = np.array([rng.uniform(0.5, 2.0)])
    blobs = [rng.normal(0, 0.3, c) * factor, rng.uniform(0.1, 1.0, c) * factor, factor]
    net = LayerNet(tmp_path, text, blobs=[("bn", "BatchNorm", blobs)])
    x = normal(shape)
    expected = batch_norm_ref(np.tanh(x.astype(np.float64)), *blobs, 1e-5 if eps is None else eps)
    # OpenCV reads BatchNorm correctly for 4-D and 2-D bottoms.
    check_backends(net, {"data": x}, [expected], opencv=len(shape) != 3)


def test_batch_norm_state_dict_and_pt_round_trip(tmp_path: Path):
    blobs = [np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, 3.0]), np.array([0.999])]
    net = bn_net(tmp_path, SHAPE, blobs)
    module = net.module.get_submodule("bn")
    assert list(net.module.state_dict()) == ["bn.mean", "bn.variance", "bn.scale_factor"]
    assert list(module.parameters()) == []  # statistics, not trainable parameters (Caffe fixes lr_mult 0)
    state = net.module.state_dict()
    for key, blob in zip(["bn.mean", "bn.variance", "bn.scale_factor"], blobs):
        assert state[key].dtype == torch.float32
        np.testing.assert_array_equal(state[key].numpy(), np.asarray(blob, dtype=np.float32))
    ninport.save_pt(net.module, tmp_path / "bn.pt")
    again = ninport.load_pt(tmp_path / "bn.pt")
    x = normal()
    with torch.no_grad():
        np.testing.assert_array_equal(again(torch.from_numpy(x)).numpy(), net.torch({"data": x})[0])
    assert_close(net.torch({"data": x})[0], batch_norm_ref(x.astype(np.float64), *blobs, 1e-5), "torch")


def test_batch_norm_without_global_stats_uses_the_batch(tmp_path: Path):
    # use_global_stats: false at test time: Caffe normalizes with the batch's own mean and variance (and the
    # stored blobs play no part). OpenCV does not implement this for a batch above 1.
    blobs = [np.array([9.0, 9.0, 9.0]), np.array([9.0, 9.0, 9.0]), np.array([1.0])]
    net = bn_net(tmp_path, SHAPE, blobs, "batch_norm_param { use_global_stats: false eps: 0.001 }")
    x = normal(scale=2.0, shift=1.0)
    mean, var = batch_stats(x.astype(np.float64))
    expected = batch_norm_ref(x.astype(np.float64), mean, var, [1.0], 1e-3)
    check_backends(net, {"data": x}, [expected])
    # Eval mode does not touch the stored statistics.
    np.testing.assert_array_equal(net.module.state_dict()["bn.mean"].numpy(), [9.0, 9.0, 9.0])


def test_batch_norm_training_updates_statistics_as_caffe(tmp_path: Path):
    # In train mode (Caffe's TRAIN phase) the layer normalizes with batch statistics and updates its blobs as
    # batch_norm_layer.cpp does: factor = factor * f + 1; mean = batch mean + f * mean;
    # variance = m / (m - 1) * batch variance + f * variance, with m values per channel and f the
    # moving_average_fraction.
    old = [np.array([0.5, -0.5, 1.0]), np.array([2.0, 1.0, 0.5]), np.array([1.5])]
    net = bn_net(tmp_path, SHAPE, old, "batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 }")
    module = net.module.train()
    x = torch.from_numpy(normal(scale=3.0, shift=2.0)).requires_grad_()
    y = module(x)
    xd = x.detach().numpy().astype(np.float64)
    mean, var = batch_stats(xd)
    assert_close(y.detach().numpy(), batch_norm_ref(xd, mean, var, [1.0], 1e-3), "train-mode top")
    m = x.numel() // 3
    state = {k: v.numpy().astype(np.float64) for k, v in module.state_dict().items()}
    assert_close(state["bn.scale_factor"], old[2] * 0.9 + 1, "factor")
    assert_close(state["bn.mean"], mean + 0.9 * old[0], "mean")
    assert_close(state["bn.variance"], m / (m - 1) * var + 0.9 * old[1], "variance")
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_batch_norm_explicit_global_stats_holds_in_training(tmp_path: Path):
    blobs = [np.array([0.5, -0.5, 1.0]), np.array([2.0, 1.0, 0.5]), np.array([2.0])]
    net = bn_net(tmp_path, SHAPE, blobs, "batch_norm_param { use_global_stats: true }")
    module = net.module.train()
    x = normal()
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    assert_close(y, batch_norm_ref(x.astype(np.float64), *blobs, 1e-5), "train mode, use_global_stats")
    np.testing.assert_array_equal(module.state_dict()["bn.scale_factor"].numpy(), [2.0])


# ---- MVN --------------------------------------------------------------------------------------------------------


def mvn_ref(x: np.ndarray, normalize_variance: bool, across_channels: bool, eps: float) -> np.ndarray:
    """mvn_layer.cpp: rows of num = N (across channels) or N × C (Caffe's legacy num() and channels()),
    subtract each row's mean, then divide by sqrt(mean of squares) + eps. The top has the legacy 4-D shape."""
    legacy = x.shape + (1,) * (4 - x.ndim)
    num = legacy[0] if across_channels else legacy[0] * legacy[1]
    rows = x.reshape(num, -1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    if normalize_variance:
        rows = rows / (np.sqrt((rows**2).mean(axis=1, keepdims=True)) + eps)
    return rows.reshape(legacy)


def mvn_net(tmp_path: Path, shape, param: str = "") -> LayerNet:
    return LayerNet(tmp_path, input_header(data=shape) + layer_text("mvn", "MVN", ["data"], ["mvn"], param))


def test_mvn_adds_eps_to_the_standard_deviation_by_hand(tmp_path: Path):
    # x = 1, 2, 3, 4: mean 2.5, deviations ±1.5 and ±0.5, variance 1.25. Caffe divides by sqrt(1.25) + eps,
    # with eps 1: 2.1180...; adding eps to the variance would divide by sqrt(2.25) = 1.5 instead.
    net = mvn_net(tmp_path, (1, 1, 1, 4), "mvn_param { eps: 1 }")
    x = np.array([[[[1.0, 2.0, 3.0, 4.0]]]], dtype=np.float32)
    expected = np.array([[[[-1.5, -0.5, 0.5, 1.5]]]]) / (np.sqrt(1.25) + 1)
    check_backends(net, {"data": x}, [expected])


@pytest.mark.parametrize("across_channels", [False, True])
@pytest.mark.parametrize("normalize_variance", [True, False])
def test_mvn_against_opencv(tmp_path: Path, normalize_variance: bool, across_channels: bool):
    param = (f"mvn_param {{ normalize_variance: {str(normalize_variance).lower()} "
             f"across_channels: {str(across_channels).lower()} }}")
    x = normal(scale=2.0, shift=0.5)
    expected = mvn_ref(x.astype(np.float64), normalize_variance, across_channels, 1e-9)
    check_backends(mvn_net(tmp_path, SHAPE, param), {"data": x}, [expected], opencv=True)


@pytest.mark.parametrize("across_channels", [False, True])
def test_mvn_with_large_eps(tmp_path: Path, across_channels: bool):
    # OpenCV divides by sqrt(variance + eps), not Caffe's sqrt(variance) + eps; with the default eps (1e-9)
    # the two agree, with eps 0.5 they differ by ~0.4 here, so this case is checked against numpy only.
    param = f"mvn_param {{ eps: 0.5 across_channels: {str(across_channels).lower()} }}"
    x = normal()
    expected = mvn_ref(x.astype(np.float64), True, across_channels, 0.5)
    check_backends(mvn_net(tmp_path, SHAPE, param), {"data": x}, [expected])


@pytest.mark.parametrize("across_channels", [False, True])
@pytest.mark.parametrize("shape", [(2, 6), (2, 3, 4)], ids=["2d", "3d"])
def test_mvn_top_takes_the_legacy_4d_shape(tmp_path: Path, shape, across_channels: bool):
    # mvn_layer.cpp, Reshape: top->Reshape(num, channels, height, width), so (2, 6) becomes (2, 6, 1, 1);
    # without across_channels each 2-D row holds one value per channel, which centres to 0.
    net = mvn_net(tmp_path, shape, f"mvn_param {{ across_channels: {str(across_channels).lower()} }}")
    legacy = shape + (1,) * (4 - len(shape))
    assert net.module.blob_shapes["mvn"] == legacy
    x = normal(shape)
    expected = mvn_ref(x.astype(np.float64), True, across_channels, 1e-9)
    if len(shape) == 2 and not across_channels:
        np.testing.assert_array_equal(expected, 0)
    check_backends(net, {"data": x}, [expected])


def test_mvn_rejects_five_axes(tmp_path: Path):
    path = tmp_path / "mvn5.prototxt"
    path.write_text(input_header(data=(1, 2, 3, 4, 5)) + layer_text("mvn5", "MVN", ["data"], ["mvn5"]))
    with pytest.raises(NinportError, match=r"'mvn5'.*at most 4 axes"):
        ninport.load(path)
