"""Benchmark: load a VGG-16-sized caffemodel (553 MB) with the protobuf reader and the wire-format reader.

    python tools/bench_load.py [--runs 5] [--layout v2|v1] [--keep DIR]

Writes seeded weights for the VGG-16 deploy net below into a temporary directory (never committed), then
times, interleaved run by run, `cat FILE > /dev/null` (the disk/page-cache floor), the protobuf path
(`read_caffemodel` + `blob_to_array` per blob) and the wire path (`ninport.caffe.wire.read_weights` +
`to_array`). Each reader runs in its own process and reports its peak RSS (`resource.getrusage`) and its
time from the call to every array being resident (one byte per page touched). Both readers' arrays are
checksummed after the timing, so the tool also shows that they read the same numbers. With the page cache
warm (the file was just written) and cold (its pages dropped with posix_fadvise DONTNEED before each run).

This process stays small (it never loads the model): Linux carries a parent's peak RSS into the
``ru_maxrss`` of a child it forks, so the children must come from a small parent to measure their own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# VGG-16, configuration D of Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
# Recognition" (2014), Table 1: 13 3×3 convolutions (pad 1) in five stages of 64, 128, 256, 512 and 512
# channels, each stage closed by 2×2 max pooling, then fully connected layers of 4096, 4096 and 1000.
# Written here as a Caffe deploy net; 138,357,544 parameters, 553 MB as float32.
_STAGES = [(1, 64, 2), (2, 128, 2), (3, 256, 3), (4, 512, 3), (5, 512, 3)]


def vgg16_prototxt() -> str:
    parts = ['name: "VGG_ILSVRC_16_layers"',
             'layer { name: "data" type: "Input" top: "data" '
             'input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } } }']
    bottom = "data"
    for stage, channels, convs in _STAGES:
        for i in range(1, convs + 1):
            name = f"conv{stage}_{i}"
            parts.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                         f'convolution_param {{ num_output: {channels} pad: 1 kernel_size: 3 }} }}')
            parts.append(f'layer {{ name: "relu{stage}_{i}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
            bottom = name
        parts.append(f'layer {{ name: "pool{stage}" type: "Pooling" bottom: "{bottom}" top: "pool{stage}" '
                     f'pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}')
        bottom = f"pool{stage}"
    for name, outputs in (("fc6", 4096), ("fc7", 4096), ("fc8", 1000)):
        parts.append(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
                     f'inner_product_param {{ num_output: {outputs} }} }}')
        bottom = name
        if name != "fc8":
            parts.append(f'layer {{ name: "relu{name[2:]}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
            parts.append(f'layer {{ name: "drop{name[2:]}" type: "Dropout" bottom: "{name}" top: "{name}" '
                         'dropout_param { dropout_ratio: 0.5 } }')
    parts.append('layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }')
    return "\n".join(parts) + "\n"


# One reader, run in a fresh process: prints JSON with its seconds, peak RSS and checksums.
_READER = r"""
import json, resource, sys, time
import numpy as np
path, how = sys.argv[1], sys.argv[2]
if how == "protobuf":
    from ninport.caffe.caffemodel import blob_to_array, read_caffemodel
    from ninport.caffe.load import weights_by_layer
else:
    from ninport.caffe.wire import read_weights
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
if how == "protobuf":
    arrays = {name: [blob_to_array(b) for b in blobs]
              for name, blobs in weights_by_layer(read_caffemodel(path), path).items()}
else:
    arrays = {name: [b.to_array() for b in blobs] for name, blobs in read_weights(path).items()}
touched = 0
for blobs in arrays.values():
    for a in blobs:
        flat = a.reshape(-1).view(np.uint8)
        touched += int(flat[::4096].sum()) + int(flat[-1])  # one byte per page: every page resident
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
vm_hwm = hwm()
sums = {name: [float(np.sum(a, dtype=np.float64)) for a in blobs] for name, blobs in arrays.items()}
print(json.dumps({"seconds": seconds, "peak_rss": peak, "base_rss": base_rss, "vm_hwm": vm_hwm, "sums": sums}))
"""

_WRITER = r"""
import sys
from ninport.caffe.load import read_net
from ninport.caffe.seeded import write_seeded_caffemodel
net = write_seeded_caffemodel(read_net(sys.argv[1]), sys.argv[2], layout=sys.argv[3], seed=0)
print(net.param_count())
"""


def drop_from_page_cache(path: str) -> None:
    """Evict this one file's pages (not the whole machine's cache), so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_reader(path: str, how: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _READER, path, how], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{how} reader failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout)


def run_cat(path: str) -> float:
    start = time.perf_counter()
    subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
    return time.perf_counter() - start


def measure(caffemodel: str, size: int, cache: str, runs: int, layout: str) -> bool:
    if cache == "warm":
        run_cat(caffemodel)  # every path below reads from memory alike
    times: dict[str, list[float]] = {"cat": [], "protobuf": [], "wire": []}
    rss: dict[str, list[int]] = {"protobuf": [], "wire": []}
    hwm: dict[str, list[int]] = {"protobuf": [], "wire": []}
    base: dict[str, list[int]] = {"protobuf": [], "wire": []}
    sums = {}
    for run in range(runs):
        order = ["cat", "protobuf", "wire"]
        for how in order[run % 3:] + order[: run % 3]:
            if cache == "cold":
                drop_from_page_cache(caffemodel)
            if how == "cat":
                times["cat"].append(run_cat(caffemodel))
                continue
            result = run_reader(caffemodel, how)
            times[how].append(result["seconds"])
            rss[how].append(result["peak_rss"])
            hwm[how].append(result["vm_hwm"])
            base[how].append(result["base_rss"])
            sums[how] = result["sums"]
    same = sums["protobuf"] == sums["wire"]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{cache} page cache: {size / 1e6:.1f} MB file ({layout} layout), {runs} interleaved runs, medians:")
    print(f"  cat FILE > /dev/null  {med['cat']:7.3f} s")
    for how in ("protobuf", "wire"):
        peak = statistics.median(rss[how])
        before = statistics.median(base[how])
        print(f"  {how:<21} {med[how]:7.3f} s = {med[how] / med['cat']:5.2f}× cat;  peak RSS {peak / 1e6:7.1f} MB "
              f"= {peak / size:4.2f}× file (VmHWM {statistics.median(hwm[how]) / 1e6:.1f} MB; "
              f"{before / 1e6:.0f} MB before reading)")
    print(f"  wire vs protobuf: {med['protobuf'] / med['wire']:.1f}× faster, "
          f"{statistics.median(rss['protobuf']) / statistics.median(rss['wire']):.1f}× less peak memory; "
          f"same numbers (per-blob float64 sums): {'yes' if same else 'NO'}")
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs of each (default 5)")
    parser.add_argument("--layout", choices=["v1", "v2"], default="v2")
    parser.add_argument("--keep", metavar="DIR", help="write the caffemodel here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)

    workdir = args.keep or tempfile.mkdtemp(prefix="ninport-bench-load-")
    os.makedirs(workdir, exist_ok=True)
    prototxt = os.path.join(workdir, "vgg16_deploy.prototxt")
    caffemodel = os.path.join(workdir, f"vgg16_seeded_{args.layout}.caffemodel")
    try:
        with open(prototxt, "w") as f:
            f.write(vgg16_prototxt())
        if not os.path.exists(caffemodel):
            start = time.perf_counter()
            params = subprocess.run([sys.executable, "-c", _WRITER, prototxt, caffemodel, args.layout],
                                    capture_output=True, text=True, check=True).stdout.strip()
            print(f"wrote {caffemodel}: {int(params):,} parameters in {time.perf_counter() - start:.1f} s")
        size = os.path.getsize(caffemodel)
        same = True
        for cache in ("warm", "cold"):
            same &= measure(caffemodel, size, cache, args.runs, args.layout)
        return 0 if same else 1
    finally:
        if not args.keep:
            for name in (caffemodel, prototxt):
                if os.path.exists(name):
                    os.unlink(name)
            os.rmdir(workdir)


if __name__ == "__main__":
    sys.exit(main())
