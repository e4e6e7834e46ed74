"""Caffe's SGD solver: learning-rate policies, the update, iter_size, clipping, fillers, solver-file errors.

References are numpy restatements of Caffe's formulas written here: sgd_solver.cpp (GetLearningRate,
ClipGradients, Normalize, Regularize, ComputeUpdateValue), solver.cpp (Step) and filler.hpp. The end-to-end
check trains a two-layer net on the bundled digits and compares every weight and momentum buffer with a numpy
run of the same iterations (forward, hand-written backward, Caffe's update).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from ninport.caffe import caffe_pb2
from ninport.caffe.caffemodel import blob_to_array, read_caffemodel, write_caffemodel
from ninport.errors import NinportError
from ninport.reproduce import fillers
from ninport.reproduce.solver import ParamBlob, SGDSolver, learning_rate, read_solver, read_state


def solver_param(text: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse(text, caffe_pb2.SolverParameter())


# --------------------------------------------------------------------------------------------------------
# Learning-rate policies against their closed forms (the comment above GetLearningRate in sgd_solver.cpp)

POLICIES = {
    "fixed": ("base_lr: 0.1 lr_policy: 'fixed'", lambda it: 0.1),
    "step": ("base_lr: 0.1 lr_policy: 'step' gamma: 0.5 stepsize: 3", lambda it: 0.1 * 0.5 ** (it // 3)),
    "exp": ("base_lr: 0.1 lr_policy: 'exp' gamma: 0.9", lambda it: 0.1 * 0.9**it),
    "inv": ("base_lr: 0.1 lr_policy: 'inv' gamma: 0.01 power: 0.75", lambda it: 0.1 * (1 + 0.01 * it) ** -0.75),
    "poly": ("base_lr: 0.1 lr_policy: 'poly' power: 2 max_iter: 20", lambda it: 0.1 * (1 - it / 20) ** 2),
    "sigmoid": ("base_lr: 0.1 lr_policy: 'sigmoid' gamma: -0.5 stepsize: 8",
                lambda it: 0.1 / (1 + math.exp(0.5 * (it - 8)))),
    "multistep": ("base_lr: 0.1 lr_policy: 'multistep' gamma: 0.1 stepvalue: 2 stepvalue: 5 stepvalue: 6",
                  lambda it: 0.1 * 0.1 ** sum(it >= s for s in (2, 5, 6))),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_lr_policy_matches_closed_form(policy: str) -> None:
    text, closed = POLICIES[policy]
    param = solver_param(text + " max_iter: 20" * ("max_iter" not in text))
    step = 0
    for it in range(20):
        rate, step = learning_rate(param, it, step)  # as the solver calls it: once per iteration, in order
        assert rate == pytest.approx(closed(it), rel=1e-6), (policy, it)


def test_multistep_keeps_caffe_state_across_a_restore() -> None:
    param = solver_param("base_lr: 1 lr_policy: 'multistep' gamma: 0.5 stepvalue: 3 stepvalue: 4 max_iter: 9")
    # Restored at iteration 7 with the state Caffe saved (current_step 2): 1 * 0.5^2, not recounted.
    assert learning_rate(param, 7, 2) == (0.25, 2)
    # Caffe advances one step per call: a fresh state at iteration 7 only reaches step 1 on this call.
    assert learning_rate(param, 7, 0) == (0.5, 1)


# --------------------------------------------------------------------------------------------------------
# One update, against sgd_solver.cpp restated in numpy


def caffe_update(weights, grads, history, rate, blobs, momentum, decay, reg, iter_size, clip):
    """ApplyUpdate: ClipGradients, then per blob Normalize, Regularize, ComputeUpdateValue; then Update."""
    grads = [g.astype(np.float64).copy() for g in grads]
    if clip >= 0:
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        if norm > clip:
            grads = [g * (clip / norm) for g in grads]
    out_w, out_h = [], []
    for w, g, h, (lr_mult, decay_mult) in zip(weights, grads, history, blobs):
        g = g / iter_size
        local_decay = decay * decay_mult
        if local_decay:
            g = g + local_decay * (np.sign(w) if reg == "L1" else w)
        h = momentum * h + rate * lr_mult * g
        out_h.append(h)
        out_w.append(w - h)
    return out_w, out_h


@pytest.mark.parametrize("reg", ["L2", "L1"])
@pytest.mark.parametrize("clip", [-1.0, 0.5])
def test_update_matches_caffe_formulas(reg: str, clip: float) -> None:
    rng = np.random.default_rng(3)
    shapes = [(4, 3), (4,), (2, 4), (2,)]
    mults = [(1.0, 1.0), (2.0, 0.0), (0.5, 2.0), (0.0, 1.0)]  # the last: lr_mult 0, still decayed in Caffe
    weights = [rng.normal(size=s) for s in shapes]
    weights[0][0, 0] = 0.0  # sign(0) = 0 for L1
    param = solver_param(f"base_lr: 0.1 lr_policy: 'step' gamma: 0.5 stepsize: 2 momentum: 0.9 "
                         f"weight_decay: 0.01 regularization_type: '{reg}' iter_size: 3 clip_gradients: {clip} "
                         "max_iter: 10")
    blobs = [ParamBlob("l", "InnerProduct", i, torch.nn.Parameter(torch.tensor(w, dtype=torch.float32)), s, *m)
             for i, (w, s, m) in enumerate(zip(weights, shapes, mults))]
    solver = SGDSolver(param, blobs)
    ref_w = [w.copy() for w in weights]
    ref_h = [np.zeros(s) for s in shapes]
    for it in range(5):
        grads = [rng.normal(size=s) for s in shapes]
        for b, g in zip(blobs, grads):
            b.tensor.grad = torch.tensor(g, dtype=torch.float32)
        rate = solver.apply_update()
        assert rate == pytest.approx(0.1 * 0.5 ** (it // 2), rel=1e-6)
        ref_w, ref_h = caffe_update(ref_w, grads, ref_h, rate, mults, 0.9, 0.01, reg, 3, clip)
        for b, w, h, hist in zip(blobs, ref_w, ref_h, solver.history):
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(b.tensor.detach().numpy(), w, atol=1e-5 * scale)
            np.testing.assert_allclose(hist.numpy(), h, atol=1e-5 * max(1.0, float(np.abs(h).max())))
    assert solver.iteration == 5
    # Momentum with lr_mult 0 never moves the blob, however much decay it gets.
    np.testing.assert_array_equal(blobs[3].tensor.detach().numpy(), weights[3].astype(np.float32))


def test_momentum_holds_the_learning_rate() -> None:
    """Caffe: h = m*h + lr*g; w -= h. torch.optim.SGD keeps lr outside: h = m*h + g; w -= lr*h.

    With a rate that halves each iteration the two differ; the numbers below are worked by hand.
    """
    param = solver_param("base_lr: 1 lr_policy: 'exp' gamma: 0.5 momentum: 0.5 max_iter: 5")
    blob = ParamBlob("l", "Bias", 0, torch.nn.Parameter(torch.zeros(1)), (1,))
    solver = SGDSolver(param, [blob])
    for _ in range(3):
        blob.tensor.grad = torch.ones(1)
        solver.apply_update()
    # h1 = 1*1 = 1; h2 = 0.5*1 + 0.5*1 = 1; h3 = 0.5*1 + 0.25*1 = 0.75; w = -(1 + 1 + 0.75)
    assert float(blob.tensor.detach()) == pytest.approx(-2.75)
    assert float(solver.history[0]) == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------------------
# End to end: a small net trained on the digits, against numpy doing the same iterations

NET_V2 = """
name: "mlp"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ scale: 0.0625 }} data_param {{ source: "digits" batch_size: {batch} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  inner_product_param {{ num_output: 12 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param {{ lr_mult: 0.5 decay_mult: 2 }} param {{ lr_mult: 1.5 decay_mult: 1 }}
  inner_product_param {{ num_output: 10 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""

# The same net in the legacy V1 syntax: blobs_lr and weight_decay instead of param specs.
NET_V1 = """
name: "mlp"
layers {{ name: "data" type: DATA top: "data" top: "label"
  transform_param {{ scale: 0.0625 }} data_param {{ source: "digits" batch_size: {batch} }} }}
layers {{ name: "ip1" type: INNER_PRODUCT bottom: "data" top: "ip1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 inner_product_param {{ num_output: 12 }} }}
layers {{ name: "relu1" type: RELU bottom: "ip1" top: "ip1" }}
layers {{ name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2"
  blobs_lr: 0.5 blobs_lr: 1.5 weight_decay: 2 weight_decay: 1 inner_product_param {{ num_output: 10 }} }}
layers {{ name: "loss" type: SOFTMAX_LOSS bottom: "ip2" bottom: "label" top: "loss" }}
"""

MULTS = [(1.0, 1.0), (2.0, 0.0), (0.5, 2.0), (1.5, 1.0)]


def digits_train_split() -> tuple[np.ndarray, np.ndarray]:
    """The training split as the digits reader documents it: default_rng(0) permutation, first 1437."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))[:1437]
    return bunch.images.reshape(len(bunch.target), 64)[order].astype(np.float64), bunch.target[order]


def numpy_training(weights, batch, iters, iter_size, lr_of, momentum, decay, reg, clip):
    """Caffe's Step, in numpy: sequential reads of ``batch`` items, forward, backward by hand, ApplyUpdate."""
    x_all, y_all = digits_train_split()
    x_all = x_all * 0.0625
    w = [a.astype(np.float64) for a in weights]
    hist = [np.zeros_like(a) for a in w]
    read = 0
    for it in range(iters):
        grads = [np.zeros_like(a) for a in w]
        for _ in range(iter_size):
            idx = (read * batch + np.arange(batch)) % len(y_all)
            read += 1
            x, y = x_all[idx], y_all[idx]
            w1, b1, w2, b2 = w
            h = x @ w1.T + b1
            a = np.maximum(h, 0)
            z = a @ w2.T + b2
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            dz = p.copy()
            dz[np.arange(batch), y] -= 1
            dz /= batch  # loss normalized by the batch (VALID, no ignore_label)
            da = dz @ w2
            dh = da * (h > 0)
            for g, d in zip(grads, (dh.T @ x, dh.sum(0), dz.T @ a, dz.sum(0))):
                g += d
        w, hist = caffe_update(w, grads, hist, lr_of(it), MULTS, momentum, decay, reg, iter_size, clip)
    return w, hist


@pytest.mark.parametrize("syntax,reg,clip", [("v2", "L2", -1.0), ("v1", "L1", 0.05)])
def test_training_matches_numpy_caffe(tmp_path: Path, syntax: str, reg: str, clip: float) -> None:
    from ninport.reproduce.train import train

    batch, iters, iter_size = 8, 5, 2
    rng = np.random.default_rng(7)
    init = [rng.normal(0, 0.3, (12, 64)), rng.normal(0, 0.1, 12), rng.normal(0, 0.3, (10, 12)),
            rng.normal(0, 0.1, 10)]
    init = [a.astype(np.float32) for a in init]
    write_caffemodel(tmp_path / "init.caffemodel",
                     [("ip1", "InnerProduct", init[:2]), ("ip2", "InnerProduct", init[2:])])
    (tmp_path / "net.prototxt").write_text((NET_V2 if syntax == "v2" else NET_V1).format(batch=batch))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "net.prototxt"\nbase_lr: 0.2\nlr_policy: "multistep"\ngamma: 0.5\nstepvalue: 2\nstepvalue: 4\n'
        f'momentum: 0.9\nweight_decay: 0.01\nregularization_type: "{reg}"\niter_size: {iter_size}\n'
        f'clip_gradients: {clip}\nmax_iter: {iters}\nsnapshot_prefix: "mlp"\nrandom_seed: 0\n'
        f'weights: "{tmp_path / "init.caffemodel"}"\n')
    metrics = train(tmp_path / "solver.prototxt", output_dir=tmp_path / "out")
    assert metrics["iterations"] == iters

    def lr_of(it: int) -> float:
        return 0.2 * 0.5 ** sum(it >= s for s in (2, 4))

    ref_w, ref_h = numpy_training(init, batch, iters, iter_size, lr_of, 0.9, 0.01, reg, clip)
    model = read_caffemodel(metrics["snapshot"])
    got = [blob_to_array(b) for layer in model.layer for b in layer.blobs]
    state = read_state(metrics["solverstate"])
    assert state.iter == iters and state.current_step == 2
    assert len(got) == 4 and len(state.history) == 4
    for g, w, hist, h in zip(got, ref_w, state.history, ref_h):
        np.testing.assert_allclose(g, w, atol=1e-5 * max(1.0, float(np.abs(w).max())))
        np.testing.assert_allclose(blob_to_array(hist), h, atol=1e-5 * max(1.0, float(np.abs(h).max())))
    # The run moved the weights: the comparison above is not comparing the initial values.
    assert float(np.abs(got[0] - init[0]).max()) > 1e-3


# --------------------------------------------------------------------------------------------------------
# Fillers (filler.hpp): statistics and exact values


def filler(text: str) -> caffe_pb2.FillerParameter:
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def test_constant_and_uniform() -> None:
    rng = np.random.default_rng(0)
    assert np.all(fillers.fill(filler("type: 'constant' value: 0.25"), (3, 4), rng) == np.float32(0.25))
    assert np.all(fillers.fill(caffe_pb2.FillerParameter(), (5,), rng) == 0)  # Caffe's default: constant 0
    u = fillers.fill(filler("type: 'uniform' min: -2 max: 3"), (200, 100), rng)
    assert u.min() >= -2 and u.max() <= 3
    assert u.mean() == pytest.approx(0.5, abs=0.05) and u.var() == pytest.approx(25 / 12, rel=0.05)


def test_gaussian_and_sparse() -> None:
    rng = np.random.default_rng(1)
    g = fillers.fill(filler("type: 'gaussian' mean: 1 std: 0.5"), (300, 100), rng)
    assert g.mean() == pytest.approx(1.0, abs=0.01) and g.std() == pytest.approx(0.5, rel=0.02)
    # sparse: each weight kept with probability sparse / shape[0]
    s = fillers.fill(filler("type: 'gaussian' std: 1 sparse: 5"), (20, 5000), rng)
    assert (s != 0).mean() == pytest.approx(5 / 20, abs=0.01)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 64 * 5 * 5), ("AVERAGE", (75 + 1600) / 2)])
def test_xavier_and_msra_scale_by_caffe_fans(norm: str, n: float) -> None:
    rng = np.random.default_rng(2)
    shape = (64, 3, 5, 5)  # a convolution blob: fan_in = 3*5*5, fan_out = 64*5*5
    x = fillers.fill(filler(f"type: 'xavier' variance_norm: {norm}"), shape, rng)
    limit = math.sqrt(3 / n)
    assert np.abs(x).max() <= limit * (1 + 1e-6) and np.abs(x).max() > 0.95 * limit
    assert x.var() == pytest.approx(limit**2 / 3, rel=0.1)
    m = fillers.fill(filler(f"type: 'msra' variance_norm: {norm}"), shape, rng)
    assert m.std() == pytest.approx(math.sqrt(2 / n), rel=0.05)


def test_inner_product_fans_use_caffe_rule() -> None:
    # filler.hpp divides the count by shape[0] and shape[1]: for an N×K InnerProduct blob, fan_in is K.
    assert fillers.fans((10, 64)) == (64, 10)
    # A 1-D blob: count / shape[0] = 1 for fan_in, the whole count for fan_out.
    assert fillers.fans((7,)) == (1, 7)


def test_positive_unitball_and_bilinear() -> None:
    rng = np.random.default_rng(3)
    p = fillers.fill(filler("type: 'positive_unitball'"), (6, 2, 3, 3), rng)
    assert p.min() >= 0 and p.max() <= 1
    np.testing.assert_allclose(p.reshape(6, -1).sum(1), 1.0, rtol=1e-6)
    # bilinear, kernel 4: f = 2, c = 3/4, weights 1 - |x/2 - 3/4| = 0.25, 0.75, 0.75, 0.25 per axis
    b = fillers.fill(filler("type: 'bilinear'"), (2, 1, 4, 4), rng)
    ramp = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(b[1, 0], np.outer(ramp, ramp))


def test_filler_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(NinportError, match="unknown filler type 'gauss'"):
        fillers.fill(filler("type: 'gauss'"), (2, 2), rng)
    with pytest.raises(NinportError, match="sparse is only supported by the gaussian filler"):
        fillers.fill(filler("type: 'xavier' sparse: 3"), (2, 2), rng)


def test_layer_filler_defaults() -> None:
    scale = text_format.Parse("name: 's' type: 'Scale' bottom: 'x' scale_param { bias_term: true }",
                              caffe_pb2.LayerParameter())
    f = fillers.layer_fillers("Scale", scale, 2)
    assert (f[0].type, f[0].value, f[1].type, f[1].value) == ("constant", 1.0, "constant", 0.0)
    prelu = caffe_pb2.LayerParameter(name="p", type="PReLU")
    assert fillers.layer_fillers("PReLU", prelu, 1)[0].value == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------------------
# Solver files Caffe would refuse


@pytest.mark.parametrize("text,message", [
    ('net: "n" base_lr: 0.1 lr_policy: "cosine" max_iter: 10', "lr_policy 'cosine' is unknown"),
    ('net: "n" base_lr: 0.1 max_iter: 10', "lr_policy is not set"),
    ('net: "n" base_lr: 0.1 lr_policy: "step" max_iter: 10', "needs a positive stepsize"),
    ('net: "n" type: "Adam" lr_policy: "fixed" max_iter: 10', "solver type 'Adam' is not supported"),
    ('net: "n" solver_type: NESTEROV lr_policy: "fixed" max_iter: 10', "solver type 'Nesterov'"),
    ('net: "n" lr_policy: "fixed"', "max_iter must be positive"),
    ('net: "n" lr_policy: "fixed" max_iter: 5 regularization_type: "L3"', "must be L1 or L2"),
])
def test_solver_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "solver.prototxt"
    path.write_text(text)
    with pytest.raises(NinportError, match=message):
        read_solver(path)


def test_solver_error_is_one_line_in_the_cli(tmp_path: Path, run_cli) -> None:
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "missing.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 3\n')
    result = run_cli("train", path)
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert "net 'missing.prototxt' not found" in result.stderr and "Traceback" not in result.stderr
