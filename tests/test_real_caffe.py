"""ninport against what real BVLC Caffe computed: the nets in ``tests/data/real_caffe/nets``, the caffemodels
Caffe saved and its ``net.blobs`` after ``forward()`` (made once by ``tools/caffe_reference.py``; the Caffe
used is described in ``tests/data/real_caffe/SOURCE.md``), so no Caffe is needed here.

Every float32 result (Caffe's dump, ninport's torch module, the exported ONNX in onnxruntime) is judged
against a float64 forward of ninport's torch module, relative to the float32 module's own distance from it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import ninport
from ninport.caffe.caffemodel import blob_to_array, read_caffemodel
from ninport.caffe.load import weights_by_layer
from ninport.caffe.wire import read_weights
from ninport.onnx.export import to_onnx_model
from ninport.verify import blob_tensors, verification_copy

DATA = Path(__file__).resolve().parent / "data" / "real_caffe"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
NETS = sorted(MANIFEST["nets"])
INPUT_PREFIX, PARAM_PREFIX = "input:", "param:"  # as tools/caffe_reference.py writes them
# Caffe's automatic Split tops (insert_splits.cpp, SplitBlobName: layer, blob, top index, "split", k).
AUTO_SPLIT = re.compile(r".+_split_\d+$")

# A float32 backend passes a blob when its distance from the float64 truth is within MULTIPLE times the
# float32 torch module's own distance on that blob, or under FLOOR (relative to the blob's largest value).
MULTIPLE = 10.0
FLOOR = 1e-6


def rel(truth: np.ndarray, got: np.ndarray) -> float:
    truth = np.asarray(truth, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if truth.size == 0:
        return 0.0
    scale = float(np.max(np.abs(truth)))
    diff = float(np.max(np.abs(truth - got)))
    return diff / scale if scale > 0 else diff


def allowed(truth: np.ndarray, float32_module: np.ndarray) -> float:
    """The distance from the truth a float32 backend may have on this blob: the net's own noise, or the floor."""
    return max(MULTIPLE * rel(truth, float32_module), FLOOR)


class Run:
    """One net: Caffe's dump, ninport's module on Caffe's caffemodel, its float32 and float64 blobs."""

    def __init__(self, name: str):
        self.name = name
        entry = MANIFEST["nets"][name]
        self.prototxt = DATA / entry["prototxt"]
        self.caffemodel = DATA / f"{name}.caffemodel"
        with np.load(DATA / f"{name}.npz", allow_pickle=False) as data:
            self.dump = {k: data[k] for k in data.files}
        self.caffe_blobs = {k: v for k, v in self.dump.items() if not k.startswith((INPUT_PREFIX, PARAM_PREFIX))}
        self.inputs = {k[len(INPUT_PREFIX):]: v for k, v in self.dump.items() if k.startswith(INPUT_PREFIX)}
        self.module = ninport.load(self.prototxt, self.caffemodel).eval()
        self.module64 = copy.deepcopy(self.module).double()
        feeds = [torch.from_numpy(self.inputs[n]) for n in self.module.input_names]
        with torch.no_grad():
            self.blobs32 = {k: v.numpy() for k, v in self.module.forward_blobs(*feeds).items()}
            self.blobs64 = {k: v.numpy() for k, v in self.module64.forward_blobs(*[f.double() for f in feeds]).items()}

        self.pycaffe32 = pycaffe_view(self.module, self.blobs32)
        self.pycaffe64 = pycaffe_view(self.module, self.blobs64)

    def finals(self) -> list[str]:
        """ninport's blobs that hold a Caffe blob's last value (pycaffe's ``net.blobs`` after forward)."""
        return list(self.module.input_names) + [v for v, c in self.module.caffe_blob_names.items() if v == c]


def pycaffe_view(module, blobs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What pycaffe's ``net.blobs[name].data`` holds after ``forward()``, from ninport's blob versions.

    Restated from Caffe: a Split's tops, and the top of Flatten, Reshape, a one-top Slice and a one-bottom
    Concat, share their bottom's memory (``ShareData`` in split_layer.cpp, flatten_layer.cpp, reshape_layer.cpp,
    slice_layer.cpp, concat_layer.cpp), and an in-place layer overwrites its bottom's memory (net.cpp). So each
    name shows the last value written into its memory, in its own shape.
    """
    caffe_name = {name: name for name in module.input_names} | dict(module.caffe_blob_names)
    root = {name: name for name in module.input_names}  # version -> the version that owns its memory
    last = dict(root)  # memory owner -> the last version written into it
    for layer, bottoms, tops in module.plan:
        kind = module.layer_types.get(layer)
        views = (kind in ("Split", "Flatten", "Reshape") or (kind == "Slice" and len(tops) == 1)
                 or (kind == "Concat" and len(bottoms) == 1))
        for i, top in enumerate(tops):
            if i < len(bottoms) and caffe_name[bottoms[i]] == caffe_name[top]:  # in place
                root[top] = root[bottoms[i]]
                last[root[top]] = top
            elif views:
                root[top] = root[bottoms[0]]
            else:
                root[top] = last[top] = top
    out = {}
    for version, name in caffe_name.items():
        if version == name:
            out[name] = blobs[last[root[version]]].reshape(blobs[version].shape)
    return out


@cache
def run(name: str) -> Run:
    return Run(name)


@cache
def onnxruntime_blobs(name: str) -> dict[str, np.ndarray]:
    """Every blob version the exported graph holds, run in onnxruntime on Caffe's input."""
    r = run(name)
    model = to_onnx_model(r.module)
    versions = [top for _, _, tops in r.module.plan for top in tops]
    tensors = blob_tensors(model, versions)
    inputs = set(r.module.input_names)
    fetch = sorted({t for t in tensors.values() if t not in inputs})
    session = ort.InferenceSession(verification_copy(model, fetch).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    values = dict(zip(fetch, session.run(fetch, {n: r.inputs[n] for n in r.module.input_names})))
    return {blob: values[t] for blob, t in tensors.items() if t in values}


def test_fixtures_are_what_caffe_wrote():
    """The caffemodels are the files the manifest recorded when Caffe saved them."""
    assert len(NETS) >= 9
    for name in NETS:
        digest = hashlib.sha256((DATA / f"{name}.caffemodel").read_bytes()).hexdigest()
        assert digest == MANIFEST["nets"][name]["caffemodel_sha256"], name


@pytest.mark.parametrize("name", NETS)
def test_blob_names_mean_what_pycaffe_means(name):
    """Every blob pycaffe showed is a blob of ninport's net with the same shape (Caffe's automatic splits
    aside), and every blob ninport keeps a final value of is one pycaffe showed."""
    r = run(name)
    ours = set(r.finals())
    theirs = set(r.caffe_blobs)
    assert theirs - ours == {b for b in theirs - ours if AUTO_SPLIT.match(b)}, sorted(theirs - ours)
    assert ours <= theirs, sorted(ours - theirs)
    for blob in ours:
        assert r.blobs32[blob].shape == r.caffe_blobs[blob].shape, (blob, r.blobs32[blob].shape)


def _divergences(r: Run, backend: dict[str, np.ndarray], blobs, view: str = "pycaffe") -> list[str]:
    """Blobs where ``backend`` is further from the float64 truth than the net's float32 noise allows; ``view``
    "pycaffe" judges Caffe names as pycaffe shows them, "versions" judges ninport's blob versions."""
    truth64, module32 = (r.pycaffe64, r.pycaffe32) if view == "pycaffe" else (r.blobs64, r.blobs32)
    bad = []
    for blob in blobs:
        truth = truth64[blob]
        limit = allowed(truth, module32[blob])
        err = rel(truth, backend[blob])
        if not err <= limit:
            bad.append(f"{blob}: {err:.3g} from the float64 truth, allowed {limit:.3g}")
    return bad


@pytest.mark.parametrize("name", NETS)
def test_caffe_agrees_with_ninport_float64(name):
    """Caffe's float32 blobs are as close to ninport's float64 forward as ninport's own float32 module is."""
    r = run(name)
    compared = [b for b in r.finals() if b in r.caffe_blobs]
    assert compared
    assert _divergences(r, r.caffe_blobs, compared) == []


@pytest.mark.parametrize("name", NETS)
def test_onnxruntime_agrees_with_ninport_float64(name):
    """The exported ONNX in onnxruntime, at every blob version the graph names, on Caffe's input."""
    r = run(name)
    got = onnxruntime_blobs(name)
    # A Parameter layer's top is a constant the export folds into an initializer: no tensor to fetch.
    constants = {top for layer, _, tops in r.module.plan if r.module.layer_types[layer] == "Parameter"
                 for top in tops}
    finals = [b for b in r.finals() if b not in r.module.input_names and b not in constants]
    assert set(finals) <= set(got), sorted(set(finals) - set(got))
    assert _divergences(r, got, sorted(got), view="versions") == []


def test_the_rule_names_a_planted_fault():
    """A 1e-4 relative change to one conv layer's weights in the NiN-shaped net makes ninport diverge from
    Caffe first at that layer's top; 1e-4 of a blob's range added to one Caffe blob is caught too."""
    r = run("nin_v1")
    faulty32, faulty64 = copy.deepcopy(r.module), copy.deepcopy(r.module64)
    feeds = [torch.from_numpy(r.inputs[n]) for n in r.module.input_names]
    with torch.no_grad():
        faulty32.conv2.weight.mul_(1 + 1e-4)
        faulty64.conv2.weight.mul_(1 + 1e-4)
        blobs32 = pycaffe_view(r.module, {k: v.numpy() for k, v in faulty32.forward_blobs(*feeds).items()})
        blobs64 = pycaffe_view(r.module, {k: v.numpy() for k, v in
                                          faulty64.forward_blobs(*[f.double() for f in feeds]).items()})
    order = [c for _, _, tops in r.module.plan for c in (r.module.caffe_blob_names[t] for t in tops)]
    diverged = [b for b in dict.fromkeys(order)
                if rel(blobs64[b], r.caffe_blobs[b]) > allowed(blobs64[b], blobs32[b])]
    assert diverged and diverged[0] == "conv2", diverged
    planted = dict(r.caffe_blobs)
    planted["cccp3"] = planted["cccp3"] + 1e-4 * np.abs(planted["cccp3"]).max()
    assert [d.split(":")[0] for d in _divergences(r, planted, ["conv2", "cccp3"])] == ["cccp3"]


@pytest.mark.parametrize("name", NETS)
def test_reader_reads_caffes_caffemodel(name):
    """ninport's wire reader and its protobuf reader give the parameters Caffe held, bit for bit."""
    r = run(name)
    params = {k[len(PARAM_PREFIX):]: v for k, v in r.dump.items() if k.startswith(PARAM_PREFIX)}
    wire = read_weights(r.caffemodel)
    parsed = weights_by_layer(read_caffemodel(r.caffemodel), str(r.caffemodel))
    for key, expected in params.items():
        layer, index = key.rsplit(":", 1)
        for blobs in (wire[layer], parsed[layer]):
            blob = blobs[int(index)]
            got = blob.to_array() if hasattr(blob, "to_array") else blob_to_array(blob)
            assert got.shape == expected.shape and np.array_equal(got, expected), key
    assert sum(len(v) for v in wire.values()) == len(params)


@pytest.mark.parametrize("name", NETS)
def test_caffe_loaded_ninports_writing(name):
    """Recorded at generation: Caffe loaded ninport's rewrite of each caffemodel (both layouts for the V1 net)
    and computed the same blobs bit for bit."""
    writer = MANIFEST["nets"][name]["ninport_writer"]
    assert set(writer) == ({"v1", "v2"} if name.endswith("_v1") else {"v2"})
    for layout, result in writer.items():
        assert result == {"loaded_by_caffe": True, "params_identical": True, "blobs_identical": True}, layout


def test_manifest_lists_every_layer_type_caffe_ran():
    """The nets cover every upstream layer family ninport converts (types as Caffe named them)."""
    ran = {t for entry in MANIFEST["nets"].values() for _, t in entry["layers"]}
    wanted = {"Convolution", "Deconvolution", "Pooling", "LRN", "InnerProduct", "ReLU", "PReLU", "ELU",
              "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold", "Clip", "Swish",
              "BatchNorm", "Scale", "Bias", "MVN", "Eltwise", "Concat", "Slice", "Split", "Flatten", "Reshape",
              "Crop", "Tile", "ArgMax", "Reduction", "Embed", "Softmax", "Dropout", "Parameter", "Input",
              "Silence"}
    assert wanted <= ran, sorted(wanted - ran)


# Nets where an in-place write through shared memory changes what pycaffe shows under another blob's name:
# verify must compare those names with the written values (ninport.verify.pycaffe_versions), as it does below.
SHARED_WRITES = {"sharing", "structure"}


def test_shared_writes_lists_the_nets_it_should():
    changed = {name for name in NETS
               if any(not np.array_equal(run(name).pycaffe32[b], run(name).blobs32[b]) for b in run(name).finals())}
    assert changed == SHARED_WRITES


@pytest.mark.parametrize("name", sorted(NETS))
def test_verify_accepts_caffes_dump_as_reference(name):
    """``ninport verify --reference NAME.npz`` with Caffe's own dump: the input comes from it and every blob
    agrees, on torch and onnxruntime."""
    from ninport.verify import verify

    r = run(name)
    report = verify(r.prototxt, r.caffemodel, reference=DATA / f"{name}.npz", runtimes="onnxruntime",
                    warn=lambda _msg: None)
    assert report.input.startswith("the input blob(s) of")
    assert report.ok, report.first_divergence
    # verify also shows earlier versions (``blob@layer``); the names pycaffe has are all there
    torch_rows = {row.blob for row in report.rows if row.backend == "torch" and "@" not in row.blob}
    assert torch_rows == {b for b in r.finals() if b in r.caffe_blobs and b not in r.module.input_names}


def test_ninports_rewrite_keeps_every_blob(tmp_path):
    """The rewrite whose loading by Caffe the manifest records (tools/caffe_reference.py ``rewrite``: read with
    ninport, write with ninport's writer) keeps every blob's values and shape, 0-axis blobs included."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("caffe_reference", DATA.parents[2] / "tools" / "caffe_reference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    zero_axis = 0
    for name in NETS:
        source = DATA / f"{name}.caffemodel"
        for layout in ("v2", "v1") if name.endswith("_v1") else ("v2",):
            target = tmp_path / f"{name}.{layout}.caffemodel"
            tool.rewrite(str(source), str(target), layout)
            before = read_weights(source)
            if not any(before.values()):  # no parameters: an empty message, which Caffe loads as no weights
                assert target.read_bytes() == b""
                continue
            after = read_weights(target)
            assert {k: len(v) for k, v in before.items() if v} == {k: len(v) for k, v in after.items()}
            for layer, blobs in after.items():
                for old, new in zip(before[layer], blobs):
                    old_array, new_array = old.to_array(), new.to_array()
                    # The V1 layout gives legacy 4-D dims, which Caffe's ShapeEquals matches padded with ones.
                    expected = old_array.shape if layout == "v2" else (1,) * (4 - old_array.ndim) + old_array.shape
                    assert new_array.shape == expected, (name, layer)
                    assert np.array_equal(old_array.ravel(), new_array.ravel()), (name, layer)
                    zero_axis += old_array.ndim == 0
    assert zero_axis >= 4  # PReLU channel_shared, the 0-axis Scale (factor, bias) and Bias
