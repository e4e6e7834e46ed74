"""``ninport train``: train the net a Caffe solver names, with Caffe's solver loop, data order and snapshots.

The loop is Caffe's Solver::Step: test every ``test_interval`` (also at iteration 0 unless
``test_initialization: false``), ``iter_size`` forward/backward passes, ``ApplyUpdate`` (``solver.py``), a
snapshot every ``snapshot`` iterations and after the last one. Snapshots are Caffe files: a V2 ``.caffemodel``
and a ``.solverstate`` (Caffe's SolverState message), beside a ``deploy.prototxt`` that Caffe and OpenCV read.

Data layers name a data set instead of an LMDB (see ``parse_source``). Items are read in order and wrap at the
end, as Caffe's Data layer reads its database; which items a step reads depends only on the iteration, so a
resumed run reads what the uninterrupted run would have read. With N processes each reads ``batch_size`` items
(Caffe's multi-GPU rule: the global batch is N × batch_size) and gradients are averaged across processes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from google.protobuf import text_format
from torch import nn

from ninport.caffe import caffe_pb2
from ninport.caffe.caffemodel import atomic_write_bytes, write_caffemodel
from ninport.caffe.net import Layer, Net
from ninport.caffe.prototxt import read_prototxt
from ninport.caffe.shapes import infer_shapes
from ninport.caffe.upgrade import DATA_LAYER_TYPES, is_loss_type, normalize
from ninport.caffe.wire import read_weights
from ninport.errors import NetError, NinportError, ParseError
from ninport.reproduce.fillers import fill, layer_fillers
from ninport.reproduce.solver import (
    ParamBlob,
    SGDSolver,
    SolverError,
    param_multipliers,
    read_solver,
    read_state,
)

FLT_MIN = float(np.finfo(np.float32).tiny)  # softmax_loss_layer.cpp clamps probabilities at FLT_MIN
LOSS_TYPES = ("SoftmaxWithLoss",)
SOURCE_FORMS = ("digits", "mnist:PATH", "cifar10:PATH", "cifar100:PATH", "svhn:PATH", "imagenet:PATH")


# --------------------------------------------------------------------------------------------------------
# Where files are: Caffe resolves paths against the working directory; solvers written for a checkout often
# name files relative to the solver itself. Try the first, then the second.


@dataclass
class Resolver:
    solver_dir: str

    def __call__(self, name: str) -> str:
        path = os.path.expanduser(name)
        if os.path.isabs(path) or os.path.exists(path):
            return path
        beside = os.path.join(self.solver_dir, path)
        return beside if os.path.exists(beside) else path


# --------------------------------------------------------------------------------------------------------
# Data: a Data layer's source names a data set ninport can read


def parse_source(text: str) -> tuple[str, str | None, dict[str, str]]:
    """``NAME[:PATH][?key=value&...]`` → (data set name, path, options).

    ``digits``, ``cifar10:~/data/cifar-10-batches-py``, ``cifar10:data/cifar-10-python.tar.gz?preprocess=gcn_zca``,
    ``cifar100:PATH?label=coarse``, ``mnist:PATH``, ``svhn:PATH``, ``imagenet:PATH/val.txt``. The phase picks the
    split: TRAIN reads ``train``, TEST reads ``test``; ``?split=train`` overrides it.
    """
    body, _, query = text.partition("?")
    name, sep, path = body.partition(":")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"option {part!r} is not key=value")
        options[key.strip()] = value.strip()
    return name.strip(), (path.strip() or None) if sep else None, options


class DataSource:
    """The items one Data layer feeds: a data set split, Caffe's transform, and Caffe's read order."""

    def __init__(self, layer: Layer, net: Net, phase: str, resolve: Resolver):
        from ninport.reproduce.datasets import Transform, normalize_name

        self.layer = layer
        where = f"{net.where(layer)}: data layer {layer.name!r}"
        p = layer.param.data_param
        if layer.type != "Data":
            raise NetError(f"{where}: ninport train reads Data layers only, not {layer.type} "
                           f"(give a Data layer whose source is one of {', '.join(SOURCE_FORMS)})")
        if not p.source:
            raise NetError(f"{where}: data_param has no source")
        if p.batch_size < 1:
            raise NetError(f"{where}: data_param needs a positive batch_size")
        try:
            name, path, options = parse_source(p.source)
            self.dataset = normalize_name(name)
        except (ValueError, NinportError):
            raise NetError(f"{where}: source {p.source!r} is not a data set ninport reads; use one of "
                           f"{', '.join(SOURCE_FORMS)} (LMDB and LevelDB databases are not read)") from None
        unknown = set(options) - {"preprocess", "label", "split"}
        if unknown:
            raise NetError(f"{where}: unknown source option(s) {', '.join(sorted(unknown))} "
                           "(known: preprocess, label, split)")
        self.path = resolve(path) if path else None
        self.options = options
        self.split = options.get("split", "train" if phase == "TRAIN" else "test")
        self.batch_size = int(p.batch_size)
        self.tops = list(layer.tops)
        transform = caffe_pb2.TransformationParameter()
        transform.CopyFrom(layer.param.transform_param)
        if transform.mean_file:
            transform.mean_file = os.path.abspath(resolve(transform.mean_file))
        # What the deploy file's Input layer carries: the transform as declared, its mean file where it was found.
        self.transform_param = transform if layer.param.HasField("transform_param") else None
        try:
            self.transform = Transform.from_param(transform, phase=phase)
        except NinportError as exc:
            raise NetError(f"{where}: {exc}") from None
        self.where = where
        self._images: np.ndarray | None = None
        self._dataset = None
        self.labels: np.ndarray | None = None

    def load(self) -> None:
        """Read the split (once). In-memory sets become one array; ImageNet folders decode per batch."""
        if self.labels is not None:
            return
        from ninport.reproduce.datasets import load_dataset, open_dataset

        label = self.options.get("label", "fine")
        try:
            if self.options.get("preprocess"):
                self._images, self.labels = load_dataset(self.dataset, self.path, self.split, label=label,
                                                         preprocess=self.options["preprocess"])
            else:
                ds = open_dataset(self.dataset, self.path, self.split, label=label)
                self._dataset, self.labels = ds, ds.labels
                self._images = ds.array
        except NinportError as exc:
            raise type(exc)(f"{self.where}: {exc}") from None
        if len(self.labels) == 0:
            raise NetError(f"{self.where}: the {self.split} split of {self.dataset} is empty")

    def __len__(self) -> int:
        self.load()
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        self.load()
        raw = self._images.shape[1:] if self._images is not None else self._dataset.image_shape
        return self.transform.output_shape(raw)

    def indices(self, index: int) -> np.ndarray:
        """The items of read number ``index`` (counted from 0): batch_size of them, wrapping at the end."""
        n = len(self)
        start = (index * self.batch_size) % n
        return (start + np.arange(self.batch_size)) % n

    def batch(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices(index)
        if self._images is not None:
            images = self._images[idx]
        else:  # decoded on demand: read the run of items (at most two pieces when it wraps)
            pieces, start = [], int(idx[0])
            stop = start + len(idx)
            pieces.append(self._dataset.images(start, min(stop, len(self))))
            if stop > len(self):
                pieces.append(self._dataset.images(0, stop - len(self)))
            images = np.concatenate(pieces)
        return self.transform(images, rng), self.labels[idx]


# --------------------------------------------------------------------------------------------------------
# Loss and accuracy layers, computed from the net's blobs (softmax_loss_layer.cpp, accuracy_layer.cpp)


def _split_axis(scores: torch.Tensor, labels: torch.Tensor, axis: int, layer: Layer):
    axis = axis % scores.dim()
    outer = int(np.prod(scores.shape[:axis], dtype=np.int64))
    inner = int(np.prod(scores.shape[axis + 1 :], dtype=np.int64))
    classes = scores.shape[axis]
    if labels.numel() != outer * inner:
        raise NetError(f"layer {layer.name!r} ({layer.type}): {labels.numel()} labels for {outer * inner} "
                       f"predictions of shape {list(scores.shape)} (Caffe needs one label per prediction)")
    return scores.reshape(outer, classes, inner), labels.reshape(outer, inner).long(), classes


def _check_label_range(lab: torch.Tensor, valid: torch.Tensor, classes: int, layer: Layer) -> None:
    used = lab[valid]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= classes):
        raise NetError(f"layer {layer.name!r} ({layer.type}): labels run {int(used.min())}..{int(used.max())}, "
                       f"but the layer sees {classes} classes")


def softmax_loss(layer: Layer, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SoftmaxWithLoss: -log softmax at the label, summed and divided by the normalizer of loss_param."""
    p = layer.param
    logits, lab, classes = _split_axis(scores, labels, p.softmax_param.axis, layer)
    lp = p.loss_param
    valid = lab != lp.ignore_label if lp.HasField("ignore_label") else torch.ones_like(lab, dtype=torch.bool)
    _check_label_range(lab, valid, classes, layer)
    logp = F.log_softmax(logits, dim=1)
    picked = logp.gather(1, torch.where(valid, lab, 0).unsqueeze(1)).squeeze(1)
    picked = torch.clamp(picked, min=math.log(FLT_MIN))
    total = -(picked * valid).sum()
    mode = lp.normalization
    if not lp.HasField("normalization") and lp.HasField("normalize"):
        mode = caffe_pb2.LossParameter.VALID if lp.normalize else caffe_pb2.LossParameter.BATCH_SIZE
    outer, inner = lab.shape
    if mode == caffe_pb2.LossParameter.FULL:
        normalizer = outer * inner
    elif mode == caffe_pb2.LossParameter.VALID:
        normalizer = int(valid.sum())
    elif mode == caffe_pb2.LossParameter.BATCH_SIZE:
        normalizer = outer
    else:
        normalizer = 1
    return total / max(1.0, float(normalizer))


def accuracy(layer: Layer, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy: the label counts as found when fewer than top_k classes score at least as high (ties lose)."""
    p = layer.param.accuracy_param
    logits, lab, classes = _split_axis(scores.detach(), labels, p.axis, layer)
    valid = lab != p.ignore_label if p.HasField("ignore_label") else torch.ones_like(lab, dtype=torch.bool)
    _check_label_range(lab, valid, classes, layer)
    true = logits.gather(1, torch.where(valid, lab, 0).unsqueeze(1))
    better = (logits >= true).sum(dim=1) - 1
    hits = ((better < p.top_k) & valid).sum()
    count = int(valid.sum())
    return hits.float() / count if count else torch.zeros((), dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------
# One phase's net: the torch module (deploy view), its data sources, and the layers computed beside it


class _Heads(nn.Module):
    """The net returning the blobs the loss and accuracy layers read (what DistributedDataParallel wraps)."""

    def __init__(self, net: nn.Module, blobs: list[str]):
        super().__init__()
        self.net = net
        self.blobs = blobs

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        blobs = self.net.forward_blobs(**inputs)
        return tuple(blobs[b] for b in self.blobs)


@dataclass
class NetSource:
    """Where a net comes from: a prototxt file, or a NetParameter written inside the solver."""

    message: caffe_pb2.NetParameter
    blocks: list | None
    source: str

    @classmethod
    def from_file(cls, path: str) -> NetSource:
        message, blocks = read_prototxt(path, caffe_pb2.NetParameter())
        return cls(message, blocks, path)

    def read(self, phase: str, state: caffe_pb2.NetState | None, deploy: bool, input_shape=None) -> Net:
        # NetState precedence as in Solver::InitTrainNet/InitTestNets: the net's own state, then the solver's.
        merged = caffe_pb2.NetState()
        merged.MergeFrom(self.message.state)
        if state is not None:
            merged.MergeFrom(state)
        message = caffe_pb2.NetParameter()
        message.CopyFrom(self.message)  # normalize renames blobs in the messages it is given
        return normalize(message, self.blocks, self.source, phase=phase, level=merged.level,
                         stages=list(merged.stage), input_shape=input_shape, deploy=deploy)


@dataclass
class PhaseNet:
    phase: str
    full: Net
    net: Net  # the deploy view the module is built from
    module: nn.Module
    heads: _Heads
    sources: list[DataSource]
    label_blobs: dict[str, DataSource]  # label top -> the source that feeds it
    losses: list[Layer]
    accuracies: list[Layer]
    blobs: list[ParamBlob] = field(default_factory=list)


def build_phase(spec: NetSource, phase: str, state: caffe_pb2.NetState | None, resolve: Resolver) -> PhaseNet:
    """Read the ``phase`` view of a train_val net, find its data sources, build its trainable module."""
    from ninport.torch.build import build_module
    from ninport.torch.registry import preflight

    full = spec.read(phase, state, deploy=False)
    sources, losses, accuracies, unsupported = [], [], [], []
    for layer in full.layers:
        if layer.type in DATA_LAYER_TYPES and not layer.bottoms:
            sources.append(DataSource(layer, full, phase, resolve))
        elif layer.type == "Accuracy":
            accuracies.append(layer)
        elif layer.type in LOSS_TYPES:
            losses.append(layer)
        elif is_loss_type(layer.type):
            unsupported.append(f"{layer.name!r} ({layer.type}, {full.where(layer)})")
    if unsupported:
        raise NetError(f"{full.source}: loss layer(s) ninport train cannot compute: {'; '.join(unsupported)}; "
                       f"supported: {', '.join(LOSS_TYPES)}")
    if not sources:
        raise NetError(f"{full.source}: the {phase} net has no Data layer; ninport train needs one whose source "
                       f"names a data set ({', '.join(SOURCE_FORMS)})")
    if phase == "TRAIN" and not losses:
        raise NetError(f"{full.source}: the TRAIN net has no loss layer ({', '.join(LOSS_TYPES)})")
    label_blobs = {s.tops[1]: s for s in sources if len(s.tops) > 1}
    shapes_in = {s.tops[0]: (s.batch_size, *s.image_shape) for s in sources}
    net = spec.read(phase, state, deploy=True, input_shape=shapes_in)
    preflight(net)
    shapes = infer_shapes(net)
    module = build_module(net, shapes)
    needed: list[str] = []
    for layer in losses + accuracies:
        if len(layer.bottoms) != 2:
            raise NetError(f"{full.where(layer)}: layer {layer.name!r} ({layer.type}) needs two bottoms "
                           "(scores and labels)")
        scores, label = layer.bottoms
        if label not in label_blobs:
            raise NetError(f"{full.where(layer)}: layer {layer.name!r} reads labels from {label!r}, "
                           "which is not the second top of a Data layer")
        if scores not in shapes.blobs:
            raise NetError(f"{full.where(layer)}: layer {layer.name!r} reads {scores!r}, which the net "
                           "does not compute")
        if scores not in needed:
            needed.append(scores)
    return PhaseNet(phase, full, net, module, _Heads(module, needed), sources, label_blobs, losses, accuracies)


def learnable_blobs(phase: PhaseNet, shapes=None) -> list[ParamBlob]:
    """Each Caffe learnable blob of the phase's net, bound to the torch parameter holding it."""
    net, module = phase.net, phase.module
    shapes = shapes or infer_shapes(net)
    out: list[ParamBlob] = []
    for layer in net.layers:
        expected = shapes.layers[layer.name].params
        if not expected:
            continue
        what = f"{net.where(layer)}: layer {layer.name!r} ({layer.type})"
        if any(spec.name for spec in layer.param.param):
            raise NetError(f"{what}: shared parameters (param {{ name: ... }}) are not supported by ninport train")
        params = list(module.layer_module(layer.name).parameters())
        if len(params) != len(expected):
            raise NetError(f"{what}: its {len(expected)} Caffe blob(s) do not map onto torch parameters; "
                           "ninport train cannot learn this layer type")
        transposed = layer.type == "InnerProduct" and layer.param.inner_product_param.transpose
        for i, ((lr_mult, decay_mult), tensor, shape) in enumerate(
                zip(param_multipliers(layer.param, len(expected)), params, expected)):
            if tensor.numel() != int(np.prod(shape, dtype=np.int64)):
                raise NetError(f"{what}: blob {i} has shape {list(shape)} but the torch parameter "
                               f"{list(tensor.shape)}")
            tensor.requires_grad_(lr_mult != 0)  # net.cpp: lr_mult 0 turns off the blob's backward
            out.append(ParamBlob(layer.name, layer.type, i, tensor, tuple(shape), lr_mult, decay_mult,
                                 transpose=transposed and i == 0))
    return out


def fill_blobs(phase: PhaseNet, blobs: list[ParamBlob], rng: np.random.Generator) -> None:
    """Initialize every blob with its layer's filler, in layer order (as Net::Init sets up each layer)."""
    by_layer: dict[str, list[ParamBlob]] = {}
    for b in blobs:
        by_layer.setdefault(b.layer, []).append(b)
    for layer in phase.net.layers:
        group = by_layer.get(layer.name)
        if not group:
            continue
        fillers = layer_fillers(layer.type, layer.param, len(group))
        where = f"{phase.net.where(layer)}: layer {layer.name!r}"
        for b, filler in zip(group, fillers):
            b.from_caffe(fill(filler, b.caffe_shape, rng, where=f"{where} blob {b.index}"))


def copy_weights(blobs: Sequence[ParamBlob], caffemodel: str) -> int:
    """Caffe's CopyTrainedLayersFrom: blobs of layers with the same name; returns how many layers matched."""
    found = read_weights(caffemodel)  # the same per-name choice of blobs as attach_weights, without protobuf
    by_layer: dict[str, list[ParamBlob]] = {}
    for b in blobs:
        by_layer.setdefault(b.layer, []).append(b)
    matched = 0
    for name, group in by_layer.items():
        if name not in found:
            continue
        protos = found[name]
        if len(protos) != len(group):
            raise NinportError(f"{caffemodel}: layer {name!r} has {len(protos)} blob(s), the net needs {len(group)}")
        for b, proto in zip(group, protos):
            b.from_caffe(proto.to_array(), where=f"{caffemodel}: ")
        matched += 1
    return matched


def share_weights(target: Sequence[ParamBlob], source: Sequence[ParamBlob]) -> None:
    """ShareTrainedLayersWith: the test net takes the train net's blobs of layers with the same name."""
    values = {(b.layer, b.index): b for b in source}
    with torch.no_grad():
        for b in target:
            src = values.get((b.layer, b.index))
            if src is not None:
                b.tensor.copy_(src.tensor.detach().reshape(b.tensor.shape))


# --------------------------------------------------------------------------------------------------------
# Files written beside the snapshots


def deploy_prototxt(net: Net, input_shapes: dict[str, tuple[int, ...]],
                    transforms: dict[str, caffe_pb2.TransformationParameter] | None = None) -> str:
    """The deploy view as V2 text with Caffe's blob names, an Input layer, and no phase rules.

    The Input layer keeps the data layer's ``transform_param`` (Caffe's schema allows it on any layer; Caffe's
    InputLayer ignores it, ninport's convert/evaluate/run read it): ``transforms`` maps an input blob to the
    transform to write for it, e.g. with its mean file's path resolved.
    """
    message = caffe_pb2.NetParameter(name=net.name)
    for layer in net.layers:
        p = caffe_pb2.LayerParameter()
        p.CopyFrom(layer.param)
        del p.bottom[:]
        p.bottom.extend(layer.caffe_bottoms)
        del p.top[:]
        p.top.extend(layer.caffe_tops)
        for name in ("include", "exclude", "phase"):
            p.ClearField(name)
        if layer.type == "Input":
            del p.input_param.shape[:]
            for top in layer.caffe_tops:
                p.input_param.shape.add().dim.extend(input_shapes[top])
            given = [transforms[top] for top in layer.caffe_tops if transforms and top in transforms]
            if given:
                p.transform_param.CopyFrom(given[0])
        message.layer.append(p)
    return text_format.MessageToString(message)


def snapshot_prefix(param: caffe_pb2.SolverParameter, solver_path: str, output_dir: str | None) -> str:
    """Where snapshots go: Caffe's snapshot_prefix rules (upgrade_proto.cpp), inside ``output_dir`` if given."""
    stem = Path(solver_path).stem
    prefix = param.snapshot_prefix
    if not prefix:
        directory, base = os.path.dirname(solver_path), stem
    elif prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        directory, base = prefix, stem
    else:
        directory, base = os.path.dirname(prefix), os.path.basename(prefix)
    return os.path.join(output_dir if output_dir is not None else directory, base)


def write_curves(path: str, log: list[dict]) -> None:
    """Training curves as a PNG: train loss (raw and smoothed), test outputs, learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), dpi=100)
    ax_loss, ax_test, ax_lr = fig.subplots(1, 3)
    train = [r for r in log if r["phase"] == "train"]
    if train:
        ax_loss.plot([r["iter"] for r in train], [r["loss"] for r in train], lw=0.6, alpha=0.5, label="loss")
        ax_loss.plot([r["iter"] for r in train], [r["smoothed_loss"] for r in train], lw=1.5, label="smoothed")
        ax_lr.plot([r["iter"] for r in train], [r["lr"] for r in train])
    tests = [r for r in log if r["phase"].startswith("test")]
    names = sorted({(r["phase"], k) for r in tests for k in r["outputs"]})
    for phase, name in names:
        rows = [r for r in tests if r["phase"] == phase and name in r["outputs"]]
        ax_test.plot([r["iter"] for r in rows], [r["outputs"][name] for r in rows], marker="o", ms=3,
                     label=f"{phase} {name}")
    ax_loss.set(title="train loss", xlabel="iteration")
    ax_test.set(title="test outputs", xlabel="iteration")
    ax_lr.set(title="learning rate", xlabel="iteration")
    for ax in (ax_loss, ax_test):
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def write_log(path: str, log: list[dict]) -> None:
    """One CSV row per value: phase, iteration, name, value (train rows: loss, smoothed_loss, lr, outputs)."""
    lines = ["phase,iter,name,value"]
    for r in log:
        values = dict(r["outputs"])
        if r["phase"] == "train":
            values = {"loss": r["loss"], "smoothed_loss": r["smoothed_loss"], "lr": r["lr"], **values}
        lines.extend(f"{r['phase']},{r['iter']},{k},{v:.9g}" for k, v in values.items())
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


# --------------------------------------------------------------------------------------------------------
# The trainer


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class TrainConfig:
    solver: str
    output_dir: str | None = None
    resume: str | None = None
    weights: list[str] = field(default_factory=list)
    progress: bool = False
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads per process; None: chosen from the net's size
    seed: int | None = None  # instead of the solver's random_seed (to repeat a run with other seeds)


# Below this many multiply-accumulates per forward pass of a batch, one thread per process is faster: small
# convolutions spend more time handing work between threads than computing (measured ~25x on two busy cores).
SMALL_NET_MACS = 500_000_000


class Trainer:
    """One process's share of a training run (rank ``rank`` of ``world``); rank 0 tests and writes files."""

    def __init__(self, config: TrainConfig, rank: int = 0, world: int = 1, local_rank: int = 0,
                 local_world: int = 1):
        self.config, self.rank, self.world, self.local_world = config, rank, world, local_world
        self.solver_path = os.fspath(config.solver)
        self.param = read_solver(self.solver_path)
        self.resolve = Resolver(os.path.dirname(os.path.abspath(self.solver_path)))
        self.device = self._device(config.device, local_rank)
        seed = int(self.param.random_seed) if config.seed is None else int(config.seed)
        if config.seed is not None and seed < 0:
            raise NinportError(f"--seed must not be negative, got {seed}")
        self.seed_given = seed >= 0
        self.seed = seed if seed >= 0 else secrets.randbits(31)
        self.train_spec, self.test_specs = self._net_specs()
        self.prefix = snapshot_prefix(self.param, self.solver_path, config.output_dir)
        self.out_dir = os.path.dirname(self.prefix) or "."
        self.log: list[dict] = []
        self.losses: list[float] = []
        self.smoothed = 0.0
        self.last_test: list[dict] = []
        self.snapshots: list[tuple[str, str]] = []
        self.warned = False

    # -- set-up ------------------------------------------------------------------------------------------

    def _device(self, choice: str, local_rank: int) -> torch.device:
        gpu_wanted = self.param.solver_mode == caffe_pb2.SolverParameter.GPU
        if choice == "cuda" or (choice == "auto" and gpu_wanted and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise NinportError("--device cuda: no CUDA device here")
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def _net_specs(self) -> tuple[NetSource, list[tuple[NetSource, caffe_pb2.NetState | None]]]:
        """The train net and the test nets, as Solver::InitTrainNet / InitTestNets choose them."""
        p, src = self.param, self.solver_path
        train_fields = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(train_fields) != 1:
            raise SolverError(f"{src}: give exactly one of net, net_param, train_net, train_net_param "
                              f"(found {', '.join(train_fields) or 'none'})")

        def from_file(name: str, what: str) -> NetSource:
            path = self.resolve(name)
            if not os.path.isfile(path):
                raise ParseError(f"{src}: {what} {name!r} not found (looked in the working directory and "
                                 f"beside the solver)")
            return NetSource.from_file(path)

        def inline(message: caffe_pb2.NetParameter, what: str) -> NetSource:
            return NetSource(message, None, f"{src}:{what}")

        field_name = train_fields[0]
        if field_name in ("net", "train_net"):
            train = from_file(getattr(p, field_name), field_name)
        else:
            train = inline(getattr(p, field_name), field_name)
        tests: list[NetSource] = [inline(m, "test_net_param") for m in p.test_net_param]
        tests += [from_file(name, "test_net") for name in p.test_net]
        generic = p.HasField("net") or p.HasField("net_param")
        if generic:
            if len(p.test_iter) < len(tests):
                raise SolverError(f"{src}: test_iter must be given for each test net")
            tests += [train] * (len(p.test_iter) - len(tests))
        elif len(p.test_iter) != len(tests):
            raise SolverError(f"{src}: test_iter must be given once for each test net "
                              f"({len(tests)} test net(s), {len(p.test_iter)} test_iter)")
        if p.test_state and len(p.test_state) != len(tests):
            raise SolverError(f"{src}: test_state must be unset or given once per test net")
        if tests and p.test_interval <= 0:
            raise SolverError(f"{src}: test nets need a positive test_interval")
        states = list(p.test_state) if p.test_state else [None] * len(tests)
        return train, list(zip(tests, states))

    def setup(self) -> None:
        rng = np.random.default_rng(self.seed)
        train_state = self.param.train_state if self.param.HasField("train_state") else None
        self.train = build_phase(self.train_spec, "TRAIN", train_state, self.resolve)
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads())
        self.train.blobs = learnable_blobs(self.train)
        fill_blobs(self.train, self.train.blobs, rng)
        self.tests: list[PhaseNet] = []
        if self.rank == 0:
            for spec, state in self.test_specs:
                test = build_phase(spec, "TEST", state, self.resolve)
                test.blobs = learnable_blobs(test)
                fill_blobs(test, test.blobs, rng)
                self.tests.append(test)
        for models in list(self.param.weights) + list(self.config.weights):
            for name in models.split(","):
                path = self.resolve(name.strip())
                if copy_weights(self.train.blobs, path) == 0:
                    raise NinportError(f"{path}: no layer of it matches a layer of the train net by name")
        self.train.module.to(self.device).train()
        for test in self.tests:
            test.module.to(self.device).eval()
        self.solver = SGDSolver(self.param, self.train.blobs)
        if self.config.resume:
            self._restore(self.config.resume)
        self.model: nn.Module = self.train.heads
        if self.world > 1:
            self._sync_initial_weights()
            find_unused = not self._all_blobs_feed_losses()
            self.model = nn.parallel.DistributedDataParallel(
                self.train.heads, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused)

    def threads(self) -> int:
        """Intra-op threads for this process: as configured, else 1 for small nets, else a share of the cores."""
        if self.config.threads:
            return max(1, int(self.config.threads))
        if infer_shapes(self.train.net).macs() < SMALL_NET_MACS:
            return 1
        return max(1, (os.cpu_count() or 1) // max(1, self.local_world))

    def _all_blobs_feed_losses(self) -> bool:
        """Whether every learnable layer lies upstream of a loss (else DDP must look for unused parameters)."""
        needed = set(self.train.heads.blobs)
        feeding: set[str] = set()
        for layer in reversed(self.train.net.layers):
            if any(t in needed for t in layer.tops):
                feeding.add(layer.name)
                needed.update(layer.bottoms)
        return all(b.layer in feeding for b in self.train.blobs if b.tensor.requires_grad)

    @torch.no_grad()
    def _sync_initial_weights(self) -> None:
        import torch.distributed as dist

        for b in self.train.blobs:
            dist.broadcast(b.tensor.data, src=0)
        for i, h in enumerate(self.solver.history):
            h = h.to(self.device)
            dist.broadcast(h, src=0)
            self.solver.history[i] = h

    def _restore(self, resume: str) -> None:
        """--resume: a .solverstate, or a .caffemodel with its .solverstate beside it (Caffe's --snapshot)."""
        path = os.fspath(resume)
        if path.endswith(".caffemodel"):
            state_path = path[: -len(".caffemodel")] + ".solverstate"
            if not os.path.isfile(state_path):
                raise ParseError(f"{path}: no {os.path.basename(state_path)} beside it to resume from "
                                 "(use --weights to start from these weights at iteration 0)")
        else:
            state_path = path
        state = read_state(state_path)
        learned = state.learned_net
        candidates = [learned, os.path.join(os.path.dirname(state_path), os.path.basename(learned))] if learned \
            else []
        if path.endswith(".caffemodel"):
            candidates.insert(0, path)
        model = next((c for c in candidates if c and os.path.isfile(c)), None)
        if model is None:
            raise ParseError(f"{state_path}: its weights {learned!r} are missing (looked beside it too)")
        copy_weights(self.train.blobs, model)
        self.solver.restore_history(state, state_path)
        self.solver.history = [h.to(self.device) for h in self.solver.history]
        if self.solver.iteration > self.param.max_iter:
            raise SolverError(f"{state_path}: iteration {self.solver.iteration} is past max_iter "
                              f"{self.param.max_iter}")

    # -- one step ----------------------------------------------------------------------------------------

    def _forward(self, phase: PhaseNet, model: nn.Module, read: int, rng: np.random.Generator):
        inputs, labels = {}, {}
        for source in phase.sources:
            images, lab = source.batch(read, rng)
            inputs[source.tops[0]] = torch.from_numpy(images).to(self.device)
            if len(source.tops) > 1:
                labels[source.tops[1]] = torch.from_numpy(lab).to(self.device)
        outs = dict(zip(phase.heads.blobs, model(**inputs)))
        total = None
        values: dict[str, float] = {}
        for layer in phase.losses:
            scores, label = layer.bottoms
            loss = softmax_loss(layer, outs[scores], labels[label])
            weight = float(layer.param.loss_weight[0]) if layer.param.loss_weight else 1.0
            values[layer.caffe_tops[0] if layer.tops else layer.name] = float(loss.detach())
            if weight:
                total = loss * weight if total is None else total + loss * weight
        for layer in phase.accuracies:
            scores, label = layer.bottoms
            values[layer.caffe_tops[0] if layer.tops else layer.name] = float(accuracy(layer, outs[scores],
                                                                                        labels[label]))
        return total, values

    def _read_index(self, micro: int) -> int:
        """Which read of the data a micro-batch is: all processes together read the data in order."""
        return micro * self.world + self.rank

    def step(self) -> tuple[float, dict[str, float]]:
        """One iteration: iter_size forward/backward passes, then Caffe's ApplyUpdate."""
        it, iter_size = self.solver.iteration, int(self.param.iter_size)
        self.solver.zero_grad()
        loss_sum, outputs = 0.0, {}
        for i in range(iter_size):
            torch.manual_seed(_seed_for(self.seed, self.rank, it, i))
            rng = np.random.default_rng(_seed_for(self.seed, self.rank, it, i, 1))
            sync = contextlib.nullcontext()
            if self.world > 1 and i < iter_size - 1:
                sync = self.model.no_sync()
            with sync:
                total, values = self._forward(self.train, self.model, self._read_index(it * iter_size + i), rng)
                if total is None:
                    raise NetError(f"{self.train.full.source}: every loss layer has loss_weight 0; nothing to train")
                total.backward()
            loss_sum += float(total.detach())
            for k, v in values.items():
                outputs[k] = outputs.get(k, 0.0) + v / iter_size
        loss = loss_sum / iter_size
        if not math.isfinite(loss) and not self.warned and self.rank == 0:
            self.warned = True
            print(f"warning: the loss is {loss} at iteration {it} (a learning rate too high?)", file=sys.stderr)
        self._update_smoothed(loss, it)
        return loss, outputs

    def _update_smoothed(self, loss: float, it: int) -> None:
        """Caffe's UpdateSmoothedLoss: the mean of the last ``average_loss`` losses."""
        average = int(self.param.average_loss)
        if len(self.losses) < average:
            self.losses.append(loss)
            self.smoothed = (self.smoothed * (len(self.losses) - 1) + loss) / len(self.losses)
        else:
            idx = (it - self.start_iter) % average
            self.smoothed += (loss - self.losses[idx]) / average
            self.losses[idx] = loss

    @torch.no_grad()
    def test_all(self) -> list[dict]:
        """Solver::Test for every test net: the mean of each output over test_iter batches."""
        results = []
        for n, test in enumerate(self.tests):
            share_weights(test.blobs, self.train.blobs)
            sums: dict[str, float] = {}
            iters = int(self.param.test_iter[n])
            for i in range(iters):
                rng = np.random.default_rng(_seed_for(self.seed, 0, self.solver.iteration, i, 2))
                _, values = self._forward(test, test.heads, i, rng)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
            means = {k: v / iters for k, v in sums.items()} if iters else {}
            row = {"phase": f"test{n}" if len(self.tests) > 1 else "test", "iter": self.solver.iteration,
                   "outputs": means}
            self.log.append(row)
            results.append(row)
            self._say(f"Iteration {self.solver.iteration}, test net #{n}: " +
                      ", ".join(f"{k} = {v:.6g}" for k, v in means.items()))
        self.last_test = results
        return results

    # -- output ------------------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if self.config.progress and self.rank == 0:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def snapshot(self) -> None:
        base = f"{self.prefix}_iter_{self.solver.iteration}"
        model_path, state_path = base + ".caffemodel", base + ".solverstate"
        layers: dict[str, list[np.ndarray]] = {}
        types: dict[str, str] = {}
        for b in self.train.blobs:
            layers.setdefault(b.layer, []).append(b.to_caffe())
            types[b.layer] = b.layer_type
        write_caffemodel(model_path, [(name, types[name], arrays) for name, arrays in layers.items()], layout="v2",
                         name=self.train.net.name)
        self.solver.write_state(state_path, model_path)
        self.snapshots.append((model_path, state_path))
        self._say(f"Snapshot: {model_path}")

    def write_deploy(self) -> str:
        phase = self.tests[0] if self.tests else self.train
        shapes = {s.tops[0]: (1, *s.image_shape) for s in phase.sources}
        net = (self.test_specs[0][0] if self.tests else self.train_spec).read(
            "TEST" if self.tests else "TRAIN",
            (self.test_specs[0][1] if self.tests else None),
            deploy=True, input_shape=shapes)
        transforms = {s.tops[0]: s.transform_param for s in phase.sources if s.transform_param is not None}
        path = os.path.join(self.out_dir, "deploy.prototxt")
        atomic_write_bytes(path, deploy_prototxt(net, shapes, transforms).encode())
        return path

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> dict:
        threads = torch.get_num_threads()
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)  # the caller's setting (tests run several trainers in one process)

    def _run(self) -> dict:
        t0 = time.perf_counter()
        self.setup()
        p = self.param
        if self.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
            deploy_path = self.write_deploy()
        self.start_iter = self.solver.iteration
        bar = None
        if self.config.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=int(p.max_iter), initial=self.solver.iteration, unit="iter", file=sys.stderr,
                       dynamic_ncols=True, leave=False)
        tested_at = None
        try:
            while self.solver.iteration < p.max_iter:
                it = self.solver.iteration
                if (self.rank == 0 and p.test_interval and it % p.test_interval == 0
                        and (it > 0 or p.test_initialization) and self.tests):
                    self.test_all()
                    tested_at = it
                loss, outputs = self.step()
                lr = self.solver.rate()
                if self.rank == 0:
                    self.log.append({"phase": "train", "iter": it, "loss": loss, "smoothed_loss": self.smoothed,
                                     "lr": lr, "outputs": outputs})
                    if p.display and it % p.display == 0:
                        self._say(f"Iteration {it}, lr = {lr:.6g}, loss = {self.smoothed:.6g}")
                self.solver.apply_update()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.smoothed:.4g}", refresh=False)
                if self.rank == 0 and p.snapshot and self.solver.iteration % p.snapshot == 0:
                    self.snapshot()
        except KeyboardInterrupt:
            # Caffe's default SIGINT action is "stop" (tools/caffe.cpp), after which Solver::Solve still writes
            # its end-of-training snapshot: an interrupted run can be resumed.
            if self.rank == 0 and self.solver.iteration > self.start_iter:
                self.snapshot()
                write_log(os.path.join(self.out_dir, "log.csv"), self.log)
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.rank != 0:
            return {}
        it = self.solver.iteration
        if p.snapshot_after_train and (not p.snapshot or it % p.snapshot != 0):
            self.snapshot()
        if self.tests and tested_at != it:
            # Caffe tests after the last iteration only when test_interval divides max_iter; ninport always
            # does, so the final numbers exist.
            self.test_all()
        curves = os.path.join(self.out_dir, "curves.png")
        log_path = os.path.join(self.out_dir, "log.csv")
        write_log(log_path, self.log)
        write_curves(curves, self.log)
        return self._metrics(time.perf_counter() - t0, deploy_path, curves, log_path)

    def _metrics(self, seconds: float, deploy: str, curves: str, log_path: str) -> dict:
        test = self.last_test[0]["outputs"] if self.last_test else {}
        acc_layers = self.tests[0].accuracies if self.tests else []
        top1 = [layer for layer in acc_layers if layer.param.accuracy_param.top_k == 1]
        test_accuracy = test.get((top1 or acc_layers)[0].caffe_tops[0]) if acc_layers else None
        loss_layers = self.tests[0].losses if self.tests else []
        test_loss = test.get(loss_layers[0].caffe_tops[0]) if loss_layers else None
        batch = sum(s.batch_size for s in self.train.sources[:1]) * self.world * int(self.param.iter_size)
        model, state = self.snapshots[-1] if self.snapshots else (None, None)
        return {
            "solver": self.solver_path,
            "net": self.train.net.name,
            "iterations": self.solver.iteration,
            "start_iteration": self.start_iter,
            "train_loss": self.smoothed,
            "test_accuracy": test_accuracy,
            "test_loss": test_loss,
            "test_outputs": [r["outputs"] for r in self.last_test],
            "lr": next((r["lr"] for r in reversed(self.log) if r["phase"] == "train"), self.solver.rate()),
            "nproc": self.world,
            "global_batch": batch,
            "device": str(self.device),
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "seed": self.seed,
            "seed_from_solver": self.seed_given and self.config.seed is None,
            "seed_from_option": self.config.seed is not None,
            "seconds": round(seconds, 3),
            "snapshot": model,
            "solverstate": state,
            "snapshots": [m for m, _ in self.snapshots],
            "deploy": deploy,
            "curves": curves,
            "log": log_path,
        }


# --------------------------------------------------------------------------------------------------------
# Entry points: one process, N processes on this machine (spawned), or a torchrun-launched group


def _torchrun_env() -> tuple[int, int, int] | None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_group(config: TrainConfig, rank: int, world: int, local_rank: int, local_world: int) -> dict:
    import torch.distributed as dist

    trainer = Trainer(config, rank, world, local_rank, local_world)
    backend = "nccl" if trainer.device.type == "cuda" else "gloo"
    if trainer.device.type == "cuda":
        torch.cuda.set_device(trainer.device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        metrics = trainer.run()
        dist.barrier()
        return metrics
    finally:
        dist.destroy_process_group()


def _spawned(index: int, config: TrainConfig, world: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import json

    try:
        metrics = _run_group(config, index, world, index, world)
        if index == 0:
            with open(os.path.join(result_dir, "result.json"), "w") as f:
                json.dump(metrics, f)
    except NinportError as exc:
        with open(os.path.join(result_dir, f"error{index}.txt"), "w") as f:
            f.write(str(exc))
        raise


def train(solver: str | os.PathLike, output_dir: str | os.PathLike | None = None, nproc: int = 1,
          resume: str | os.PathLike | None = None, weights: Sequence[str] = (), progress: bool = False,
          device: str = "auto", threads: int | None = None, seed: int | None = None) -> dict:
    """Train with Caffe's solver semantics; returns the final metrics (rank 0's; ``{}`` on other ranks).

    Under ``torchrun`` (RANK/WORLD_SIZE in the environment) each launched process is one rank and ``nproc`` is
    ignored; otherwise ``nproc`` > 1 spawns that many processes on this machine.
    """
    config = TrainConfig(os.fspath(solver), None if output_dir is None else os.fspath(output_dir),
                         None if resume is None else os.fspath(resume), list(weights), progress, device, threads,
                         seed)
    launched = _torchrun_env()
    if launched is not None and launched[1] > 1:
        rank, world, local_rank = launched
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return _run_group(config, rank, world, local_rank, local_world)
    if nproc < 1:
        raise NinportError(f"--nproc must be at least 1, got {nproc}")
    if nproc == 1:
        return Trainer(config).run()
    # Check the solver, the nets and the data sources here, so mistakes are one line before any process starts.
    check = Trainer(config)
    check.train_spec.read("TRAIN", None, deploy=False)
    import json

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="ninport-train-") as result_dir:
        try:
            mp.spawn(_spawned, args=(config, nproc, _free_port(), result_dir), nprocs=nproc, join=True)
        except Exception as exc:
            errors = sorted(Path(result_dir).glob("error*.txt"))
            if errors:
                raise NinportError(errors[0].read_text()) from None
            raise NinportError(f"a training process failed: {str(exc).strip().splitlines()[-1]}") from None
        result = Path(result_dir) / "result.json"
        return json.loads(result.read_text()) if result.exists() else {}


__all__: Sequence[str] = [
    "DataSource",
    "Trainer",
    "TrainConfig",
    "accuracy",
    "build_phase",
    "copy_weights",
    "deploy_prototxt",
    "fill_blobs",
    "learnable_blobs",
    "parse_source",
    "snapshot_prefix",
    "softmax_loss",
    "train",
]
