"""Run real Caffe (pycaffe) on the small nets in ``tests/data/real_caffe/nets`` and write what it produced:
the caffemodel Caffe saved, every ``net.blobs`` array after ``forward()`` with the input and the parameters
(``.npz``), and a ``manifest.json`` recording that Caffe also loads ninport's writing of each caffemodel.

It needs a Python where ``import caffe`` works; it does not build Caffe (``SOURCE.md`` beside the outputs
says which Caffe made the committed files). ninport's writer runs in ``--ninport-python`` (another venv:
pycaffe and ninport want different protobuf runtimes), through this same file's ``rewrite`` mode.

    python tools/caffe_reference.py [--nets DIR] [--out DIR] [--ninport-python PY] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = os.path.join(ROOT, "tests", "data", "real_caffe", "nets")
OUT = os.path.join(ROOT, "tests", "data", "real_caffe")

# Inputs that index a table (Embed): integer values in [0, n). Every other input is N(0, 1) scaled by 1.5.
INTEGER_INPUTS = {("embed", "ids"): 10}
# npz keys beside the blob names: the input as fed, and each layer's parameter blobs as Caffe held them.
INPUT_PREFIX = "input:"
PARAM_PREFIX = "param:"


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _seeded_params(net, rng: np.random.Generator) -> dict[str, str]:
    """Blobs Caffe leaves at zero (BatchNorm statistics, Parameter) get seeded values; returns what was set."""
    done = {}
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == "BatchNorm":
            mean, var, factor = net.params[name]
            # The stored statistics are sums scaled by the factor; 0 makes Caffe use mean 0 and variance 0.
            value = 0.0 if "zero" in name else 0.5
            mean.data[...] = rng.normal(0, 0.5, mean.data.shape) * value
            var.data[...] = rng.uniform(0.3, 2.0, var.data.shape) * value
            factor.data[...] = value
            done[name] = f"BatchNorm statistics seeded, scale factor {value:g}"
        elif layer.type == "Parameter":
            blob = net.params[name][0]
            blob.data[...] = rng.normal(0, 1, blob.data.shape)
            done[name] = "Parameter blob seeded N(0,1)"
    return done


def _inputs(net, net_name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for name in net.inputs:
        shape = net.blobs[name].data.shape
        high = INTEGER_INPUTS.get((net_name, name))
        if high is not None:
            feeds[name] = rng.integers(0, high, shape).astype(np.float32)
        else:
            feeds[name] = (rng.normal(0, 1, shape) * 1.5).astype(np.float32)
    return feeds


def _forward(net, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name, value in feeds.items():
        net.blobs[name].data[...] = value
    net.forward()
    return {name: np.array(blob.data, copy=True) for name, blob in net.blobs.items()}


def _rewrite_with_ninport(python: str, source: str, target: str, layout: str) -> None:
    subprocess.run([python, os.path.abspath(__file__), "rewrite", source, target, layout], check=True)


def generate(nets_dir: str, out_dir: str, ninport_python: str | None, only: set[str] | None) -> None:
    import caffe

    caffe.set_mode_cpu()
    manifest_path = os.path.join(out_dir, "manifest.json")
    manifest = {"caffe": {}, "nets": {}}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    manifest["caffe"] = {"version": getattr(caffe, "__version__", "?")}
    for file in sorted(os.listdir(nets_dir)):
        if not file.endswith(".prototxt"):
            continue
        net_name = file[: -len(".prototxt")]
        if only and net_name not in only:
            continue
        proto = os.path.join(nets_dir, file)
        caffe.set_random_seed(_seed(net_name))  # Caffe's own fillers draw from this
        rng = np.random.default_rng(_seed(net_name))
        net = caffe.Net(proto, caffe.TEST)
        seeded = _seeded_params(net, rng)
        feeds = _inputs(net, net_name, rng)
        blobs = _forward(net, feeds)
        model_path = os.path.join(out_dir, f"{net_name}.caffemodel")
        net.save(model_path)
        arrays = dict(blobs)
        arrays.update({INPUT_PREFIX + k: v for k, v in feeds.items()})
        for layer_name, params in net.params.items():
            for i, blob in enumerate(params):
                arrays[f"{PARAM_PREFIX}{layer_name}:{i}"] = np.array(blob.data, copy=True)
        np.savez_compressed(os.path.join(out_dir, f"{net_name}.npz"), **arrays)
        entry = {
            "prototxt": f"nets/{file}",
            "seed": _seed(net_name),
            "seeded": seeded,
            "caffemodel_sha256": _sha256(model_path),
            "blobs": list(net.blobs),
            "layers": [[n, layer.type] for n, layer in zip(net._layer_names, net.layers)],
        }
        del net
        # Caffe's loader on ninport's writing of the same weights: the same blobs, bit for bit?
        if ninport_python:
            layouts = ["v2", "v1"] if net_name.endswith("_v1") else ["v2"]
            entry["ninport_writer"] = {}
            for layout in layouts:
                with tempfile.TemporaryDirectory() as tmp:
                    written = os.path.join(tmp, f"{net_name}.{layout}.caffemodel")
                    _rewrite_with_ninport(ninport_python, model_path, written, layout)
                    again = caffe.Net(proto, caffe.TEST, weights=written)
                    blobs_again = _forward(again, feeds)
                    identical = all(np.array_equal(blobs[k], blobs_again[k]) for k in blobs)
                    params_same = all(
                        np.array_equal(arrays[f"{PARAM_PREFIX}{n}:{i}"], b.data)
                        for n, ps in again.params.items() for i, b in enumerate(ps))
                    del again
                entry["ninport_writer"][layout] = {"loaded_by_caffe": True, "params_identical": params_same,
                                                   "blobs_identical": identical}
        manifest["nets"][net_name] = entry
        print(f"{net_name}: {len(blobs)} blobs, {entry.get('ninport_writer', 'writer not checked')}")
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


def rewrite(source: str, target: str, layout: str) -> None:
    """With ninport: read a caffemodel and write the same weights with ninport's own writer."""
    from ninport.caffe.caffemodel import write_caffemodel
    from ninport.caffe.wire import iter_layers

    layers = []
    for name, layer_type, blobs in iter_layers(source):
        if blobs:
            layers.append((name, layer_type, [np.array(b.to_array()) for b in blobs]))
    write_caffemodel(target, layers, layout=layout)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rewrite"]:
        rewrite(*argv[1:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default=NETS)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--ninport-python", help="a Python with ninport, to check Caffe loads ninport's writer")
    parser.add_argument("--only", help="comma-separated net names")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    generate(args.nets, args.out, args.ninport_python, only)


if __name__ == "__main__":
    main()
