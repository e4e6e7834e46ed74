"""Caffe's SGD solver (src/caffe/solvers/sgd_solver.cpp, src/caffe/solver.cpp) over torch tensors.

What differs from ``torch.optim.SGD``: the learning rate sits inside the momentum buffer
(``history = momentum * history + lr * lr_mult * (grad + decay)``, then ``w -= history``), gradients summed over
``iter_size`` passes are divided by ``iter_size`` *after* the global-norm clipping, and the rate follows one of
Caffe's ``lr_policy`` formulas evaluated at the number of updates done so far.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ninport.caffe import caffe_pb2
from ninport.caffe.caffemodel import array_to_blob, atomic_write_bytes, blob_to_array
from ninport.caffe.prototxt import read_prototxt
from ninport.errors import NinportError, ParseError

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class SolverError(NinportError):
    """A solver file that reads but asks for something Caffe would refuse or ninport cannot do."""


# --------------------------------------------------------------------------------------------------------
# Reading and checking the solver file


def read_solver(path: str | os.PathLike) -> caffe_pb2.SolverParameter:
    """Read a ``solver.prototxt`` and check it as Caffe's Solver::Init and SGDSolver would."""
    source = os.fspath(path)
    param, _ = read_prototxt(source, caffe_pb2.SolverParameter())
    check_solver(param, source)
    return param


def solver_type(param: caffe_pb2.SolverParameter) -> str:
    """The solver's type: the string ``type`` field, or the legacy ``solver_type`` enum when only it is set."""
    if param.HasField("type") or not param.HasField("solver_type"):
        return param.type
    return caffe_pb2.SolverParameter.SolverType.Name(param.solver_type).capitalize().replace("Sgd", "SGD")


def check_solver(param: caffe_pb2.SolverParameter, source: str = "solver") -> None:
    kind = solver_type(param)
    if kind.upper() != "SGD":
        raise SolverError(f"{source}: solver type {kind!r} is not supported; ninport trains with Caffe's SGD only")
    if param.lr_policy not in LR_POLICIES:
        what = f"lr_policy {param.lr_policy!r} is unknown" if param.lr_policy else "lr_policy is not set"
        raise SolverError(f"{source}: {what}; use one of {', '.join(LR_POLICIES)}")
    policy = param.lr_policy
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise SolverError(f"{source}: lr_policy {policy!r} needs a positive stepsize")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise SolverError(f"{source}: gamma must not be negative for lr_policy {policy!r}")
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError(f"{source}: lr_policy 'poly' needs max_iter")
    if param.max_iter <= 0:
        raise SolverError(f"{source}: max_iter must be positive, got {param.max_iter}")
    if param.iter_size < 1:
        raise SolverError(f"{source}: iter_size must be at least 1, got {param.iter_size}")
    if param.average_loss < 1:
        raise SolverError(f"{source}: average_loss must be at least 1, got {param.average_loss}")
    if param.regularization_type not in ("L1", "L2"):
        raise SolverError(f"{source}: regularization_type must be L1 or L2, got {param.regularization_type!r}")
    if param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
        raise SolverError(f"{source}: snapshot_format HDF5 is not supported; ninport writes BINARYPROTO snapshots")
    if param.snapshot < 0 or param.display < 0 or param.test_interval < 0:
        raise SolverError(f"{source}: snapshot, display and test_interval must not be negative")


# --------------------------------------------------------------------------------------------------------
# Learning-rate policies


def learning_rate(param: caffe_pb2.SolverParameter, iteration: int, current_step: int = 0) -> tuple[float, int]:
    """(rate, current_step) at ``iteration`` (the number of updates already applied), as GetLearningRate.

    ``multistep`` keeps Caffe's state: ``current_step`` advances by at most one per call, when the iteration
    reaches the next ``stepvalue``; ``step`` recomputes it; the other policies leave it alone.
    """
    policy = param.lr_policy
    base = float(param.base_lr)
    gamma, power = float(param.gamma), float(param.power)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = iteration // param.stepsize
        rate = base * gamma**current_step
    elif policy == "exp":
        rate = base * gamma**iteration
    elif policy == "inv":
        rate = base * (1.0 + gamma * iteration) ** (-power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
        rate = base * gamma**current_step
    elif policy == "poly":
        rate = base * (1.0 - iteration / param.max_iter) ** power
    elif policy == "sigmoid":
        rate = base * (1.0 / (1.0 + math.exp(-gamma * (iteration - param.stepsize))))
    else:
        raise SolverError(f"unknown lr_policy {policy!r}; use one of {', '.join(LR_POLICIES)}")
    return float(np.float32(rate)), current_step


# --------------------------------------------------------------------------------------------------------
# The learnable blobs of a net, seen as Caffe sees them


@dataclass
class ParamBlob:
    """One learnable Caffe blob: where it lives in the torch module, its Caffe shape and its multipliers.

    ``transpose`` marks an InnerProduct weight stored K×N in Caffe (``transpose: true``) but N×K in torch.
    """

    layer: str
    layer_type: str
    index: int
    tensor: torch.nn.Parameter
    caffe_shape: tuple[int, ...]
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    transpose: bool = False

    @property
    def name(self) -> str:
        return f"{self.layer}[{self.index}]"

    def to_caffe(self) -> np.ndarray:
        """The blob's values in Caffe's shape and layout."""
        value = self.tensor.detach().cpu()
        if self.transpose:
            value = value.t()
        return np.ascontiguousarray(value.numpy().reshape(self.caffe_shape), dtype=np.float32)

    def from_caffe(self, array: np.ndarray, where: str = "") -> None:
        """Set the blob from an array in Caffe's shape (a legacy 4-D shape padded with ones is accepted)."""
        array = np.asarray(array, dtype=np.float32)
        squeezed = tuple(array.shape)
        while len(squeezed) > len(self.caffe_shape) and squeezed[0] == 1:
            squeezed = squeezed[1:]
        if squeezed != self.caffe_shape:
            raise NinportError(f"{where}layer {self.layer!r} blob {self.index}: shape {list(array.shape)} does not "
                               f"fit the net's {list(self.caffe_shape)}")
        value = torch.from_numpy(array.reshape(self.caffe_shape).copy())
        if self.transpose:
            value = value.t()
        with torch.no_grad():
            self.tensor.copy_(value.reshape(self.tensor.shape))


def param_multipliers(layer_param: caffe_pb2.LayerParameter, count: int) -> list[tuple[float, float]]:
    """(lr_mult, decay_mult) of each blob: the layer's ``param`` specs, 1 and 1 past the ones given (net.cpp)."""
    out = []
    for i in range(count):
        spec = layer_param.param[i] if i < len(layer_param.param) else caffe_pb2.ParamSpec()
        out.append((float(spec.lr_mult), float(spec.decay_mult)))
    return out


# --------------------------------------------------------------------------------------------------------
# The update


@dataclass
class SGDSolver:
    """Caffe's SGD over a list of ``ParamBlob``: ``apply_update`` does one ApplyUpdate and counts it."""

    param: caffe_pb2.SolverParameter
    blobs: list[ParamBlob]
    iteration: int = 0
    current_step: int = 0
    history: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.history:
            self.history = [torch.zeros_like(b.tensor, memory_format=torch.contiguous_format) for b in self.blobs]

    def rate(self) -> float:
        """The rate the next update will use (does not advance ``multistep``'s state)."""
        return learning_rate(self.param, self.iteration, self.current_step)[0]

    def grads(self) -> list[torch.Tensor]:
        """Each blob's accumulated gradient (zeros for blobs that got none, e.g. lr_mult 0)."""
        out = []
        for b in self.blobs:
            g = b.tensor.grad
            out.append(torch.zeros_like(b.tensor) if g is None else g)
        return out

    @torch.no_grad()
    def apply_update(self) -> float:
        """Clip, normalize by iter_size, regularize, fold into the history, step; returns the rate used."""
        rate, self.current_step = learning_rate(self.param, self.iteration, self.current_step)
        grads = [g.detach().clone() for g in self.grads()]
        clip = float(self.param.clip_gradients)
        if clip >= 0:
            norm = math.sqrt(sum(float(torch.sum(g.double() * g.double())) for g in grads))
            if norm > clip:
                scale = clip / norm
                for g in grads:
                    g.mul_(scale)
        iter_size = int(self.param.iter_size)
        decay = float(self.param.weight_decay)
        l1 = self.param.regularization_type == "L1"
        momentum = float(self.param.momentum)
        for blob, g, h in zip(self.blobs, grads, self.history):
            if iter_size != 1:
                g.mul_(1.0 / iter_size)
            local_decay = decay * blob.decay_mult
            if local_decay:
                g.add_(torch.sign(blob.tensor) if l1 else blob.tensor, alpha=local_decay)
            local_rate = rate * blob.lr_mult
            h.mul_(momentum).add_(g, alpha=local_rate)
            blob.tensor.sub_(h)
        self.iteration += 1
        return rate

    def zero_grad(self) -> None:
        for b in self.blobs:
            b.tensor.grad = None

    # Solver state: Caffe's SolverState message (iter, learned_net, one history blob per learnable blob,
    # current_step), so a .solverstate written here also restores in Caffe, and the other way round.

    def state_message(self, learned_net: str) -> caffe_pb2.SolverState:
        state = caffe_pb2.SolverState(iter=self.iteration, learned_net=learned_net, current_step=self.current_step)
        for blob, h in zip(self.blobs, self.history):
            value = h.detach().cpu()
            if blob.transpose:
                value = value.t()
            state.history.append(array_to_blob(value.numpy().reshape(blob.caffe_shape)))
        return state

    def write_state(self, path: str | os.PathLike, learned_net: str) -> None:
        atomic_write_bytes(path, self.state_message(learned_net).SerializeToString())

    def restore_history(self, state: caffe_pb2.SolverState, source: str) -> None:
        if len(state.history) != len(self.blobs):
            raise NinportError(f"{source}: {len(state.history)} history blobs, but the net has {len(self.blobs)} "
                               "learnable blobs (a snapshot of another net?)")
        for i, (blob, proto) in enumerate(zip(self.blobs, state.history)):
            array = blob_to_array(proto)
            if array.size != int(np.prod(blob.caffe_shape, dtype=np.int64)):
                raise NinportError(f"{source}: history blob {i} has {array.size} values, "
                                   f"{blob.name} needs shape {list(blob.caffe_shape)}")
            value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).reshape(blob.caffe_shape))
            if blob.transpose:
                value = value.t()
            self.history[i] = value.reshape(blob.tensor.shape).clone()
        self.iteration = int(state.iter)
        self.current_step = int(state.current_step)


def read_state(path: str | os.PathLike) -> caffe_pb2.SolverState:
    """Read a Caffe ``.solverstate`` (binary SolverState)."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise ParseError(f"{source}: no such file")
    with open(source, "rb") as f:
        data = f.read()
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(data)
    except Exception as exc:
        raise ParseError(f"{source}: not a Caffe .solverstate ({exc})") from None
    if not state.HasField("iter"):
        raise ParseError(f"{source}: not a Caffe .solverstate (no iteration count in it)")
    return state


__all__: Sequence[str] = [
    "LR_POLICIES",
    "ParamBlob",
    "SGDSolver",
    "SolverError",
    "check_solver",
    "learning_rate",
    "param_multipliers",
    "read_solver",
    "read_state",
    "solver_type",
]
