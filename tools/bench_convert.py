"""Benchmark: convert NiN and run it, against the import floor and against OpenCV dnn, side by side.

    python tools/bench_convert.py [--runs 5] [--repeat 20] [--threads 2] [--batch 1,16]

1. Conversion: `ninport convert` of the gist's train_val.prototxt with seeded V1 weights, against
   `python -c "import torch, onnx, onnxruntime"` (what any converter to ONNX checked in onnxruntime must
   import), each in a fresh process, interleaved run by run; prints the medians and their ratio.
2. The graph: the node types of the written ONNX file and of onnxruntime's optimized graph (Conv+ReLU fused?
   any Reshape/Transpose?).
3. Inference: the written NiN ONNX file in onnxruntime against OpenCV dnn on the same caffemodel (and the
   other runtimes that are installed), batch 1 and 16, interleaved round by round with the machine's SGEMM
   peak (``ninport.bench``); prints latency, images/s, share of the peak and the ratios.

4. With ``--vgg``: a VGG-16-shaped caffemodel (553 MB, ``tools/bench_load.py``'s net) converted, interleaved
   with its floor: the import floor, reading the caffemodel and writing the .onnx and .pt bytes (``cat``
   and ``dd``), and the parity check's forwards (float32 torch, its float64 truth and onnxruntime at batches
   1 and 2, timed in one helper process). Prints wall and peak RSS (the converter's process and its check
   helper, sampled from /proc) as ratios to the floor and to the file size.

The weights are seeded (the real ones cannot be downloaded here) and live in a temporary directory.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIST = ROOT / "reference" / "nin_imagenet" / "train_val.prototxt"
FLOOR = "import torch, onnx, onnxruntime"


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return seconds


def ninport_cmd() -> list[str]:
    exe = shutil.which("ninport", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "ninport.cli"]


def bench_conversion(caffemodel: Path, workdir: Path, runs: int) -> Path:
    out = workdir / "nin.onnx"
    commands = {
        "import floor": [sys.executable, "-c", FLOOR],
        "ninport convert": [*ninport_cmd(), "convert", str(GIST), str(caffemodel), "-o", str(out)],
        "ninport inspect": [*ninport_cmd(), "inspect", str(GIST)],
    }
    for cmd in commands.values():  # one untimed run each: the files and Python's caches are warm for all
        wall(cmd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for run in range(runs):
        for name in names[run % len(names):] + names[: run % len(names)]:
            times[name].append(wall(commands[name]))
    floor = statistics.median(times["import floor"])
    print(f"conversion, {runs} interleaved runs each (median, min–max):")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<16} {med:6.2f} s  ({min(values):.2f}–{max(values):.2f})  = {med / floor:4.2f}× "
              f"`python -c \"{FLOOR}\"`")
    return out


def show_graph(onnx_path: Path, workdir: Path) -> None:
    import onnx

    from ninport.onnx.runtime import make_session

    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in init_names]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    print(f"exported graph: {dict(ops)}; inputs {inputs}; {len(init_names)} initializers (not inputs); "
          f"batch axis {'dynamic ' + repr(batch.dim_param) if batch.dim_param else batch.dim_value}")
    cache = workdir / "ort-cache"
    make_session(onnx_path, provider="cpu", optimized_cache=cache)
    optimized = onnx.load(str(next(cache.iterdir())), load_external_data=False)
    fused = collections.Counter(
        n.op_type + ("(" + ",".join(a.s.decode() for a in n.attribute if a.name == "activation") + ")"
                     if any(a.name == "activation" for a in n.attribute) else "")
        for n in optimized.graph.node
    )
    print(f"onnxruntime's optimized graph (level all): {dict(fused)}")


# --------------------------------------------------------------------------------------------------------
# A VGG-16-shaped model: wall and peak memory against the floor

_FORWARDS = r"""
import sys, time, json
import numpy as np, onnxruntime as ort, torch
from ninport.parity import forward_truth
from ninport.torch.build import load_pt
module = load_pt(sys.argv[2])
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
seconds = 0.0
for batch in (1, 2):
    x = module.example_inputs(batch=batch, seed=batch)
    start = time.perf_counter()
    with torch.no_grad():
        module(*x)
    session.run(None, {module.input_names[0]: x[0].numpy()})
    forward_truth(module, [t.numpy() for t in x])  # the float64 truth the parity rule judges by
    seconds += time.perf_counter() - start
print(json.dumps({"seconds": seconds}))
"""


def _children(pid: int) -> list[int]:
    found = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for child in f.read().split():
                found += _children(int(child))
    except OSError:
        pass
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sampled(cmd: list[str]) -> tuple[float, int, int]:
    """Run ``cmd``; return its wall seconds, its own peak RSS and the largest peak RSS of its children,
    sampled every 10 ms from /proc (VmRSS; the process's own VmHWM is gone once it exits)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in _children(proc.pid):
            peaks[pid] = max(peaks.get(pid, 0), _rss(pid))
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().strip()}")
    own = peaks.pop(proc.pid, 0)
    return seconds, own, max(peaks.values(), default=0)


def bench_vgg(workdir: Path, runs: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_load import vgg16_prototxt

    from ninport.caffe.load import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    prototxt = workdir / "vgg16.prototxt"
    prototxt.write_text(vgg16_prototxt())
    caffemodel = workdir / "vgg16.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), caffemodel, layout="v2", seed=0)
    size = caffemodel.stat().st_size
    out = workdir / "vgg16.onnx"
    convert = [*ninport_cmd(), "convert", str(prototxt), str(caffemodel), "-o", str(out)]
    sampled(convert)  # untimed: warm caches; also writes the files the floor's forwards use
    pt = out.with_suffix(".pt")
    bytes_cmd = ["sh", "-c", f"cat '{caffemodel}' > /dev/null && dd if=/dev/zero of='{workdir}/floor.bin' bs=4M "
                             f"count={(out.stat().st_size + pt.stat().st_size) // (4 << 20)} conv=fsync "
                             "status=none; rm -f '{workdir}/floor.bin'"]
    forwards = [sys.executable, "-c", _FORWARDS, str(out), str(pt)]
    walls: dict[str, list[float]] = {"convert": [], "imports": [], "bytes": [], "forwards": []}
    own: list[int] = []
    helper: list[int] = []
    for _ in range(runs):
        seconds, main_peak, child_peak = sampled(convert)
        walls["convert"].append(seconds)
        own.append(main_peak)
        helper.append(child_peak)
        walls["imports"].append(wall([sys.executable, "-c", FLOOR]))
        walls["bytes"].append(wall(bytes_cmd))
        proc = subprocess.run(forwards, capture_output=True, text=True, check=True)
        walls["forwards"].append(json.loads(proc.stdout)["seconds"])
    med = {k: statistics.median(v) for k, v in walls.items()}
    floor = med["imports"] + med["bytes"] + med["forwards"]
    print(f"VGG-16-shaped caffemodel, {size / 1e6:.0f} MB; {runs} runs, medians:")
    print(f"  floor: imports {med['imports']:.2f} s + read/write the bytes {med['bytes']:.2f} s + the check's "
          f"forwards {med['forwards']:.2f} s = {floor:.2f} s")
    print(f"  ninport convert  {med['convert']:.2f} s = {med['convert'] / floor:.2f}× the floor")
    main_rss, helper_rss = statistics.median(own), statistics.median(helper)
    print(f"  peak RSS: converter {main_rss / 1e6:.0f} MB = {main_rss / size:.2f}× the file; "
          f"check helper {helper_rss / 1e6:.0f} MB = {helper_rss / size:.2f}×")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved conversion runs (default 5)")
    parser.add_argument("--repeat", type=int, default=20, help="interleaved inference rounds per batch")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--runtimes", default="onnxruntime,opencv,openvino,torch",
                        help="the first is the reference of the ratios")
    parser.add_argument("--vgg", action="store_true",
                        help="only the VGG-16-shaped conversion: wall and peak RSS against the floor")
    args = parser.parse_args(argv)
    if args.vgg:
        workdir = Path(tempfile.mkdtemp(prefix="ninport-bench-vgg-"))
        try:
            bench_vgg(workdir, args.runs)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0

    from ninport.bench import BenchModel, bench_prepared, format_report
    from ninport.caffe.load import load_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    workdir = Path(tempfile.mkdtemp(prefix="ninport-bench-convert-"))
    try:
        caffemodel = workdir / "nin_seeded_v1.caffemodel"
        from ninport.caffe.load import read_net

        write_seeded_caffemodel(read_net(GIST), caffemodel, layout="v1", seed=0)
        onnx_path = bench_conversion(caffemodel, workdir, args.runs)
        print()
        show_graph(onnx_path, workdir)
        print()
        # OpenCV reads the same caffemodel through a deploy prototxt: the normalized net as V2 text.
        net, shapes = load_net(GIST, caffemodel)
        deploy = workdir / "deploy.prototxt"
        deploy.write_text(net.to_prototxt())
        (name, shape), = net.inputs.items()
        pt_path = onnx_path.with_suffix(".pt")

        def module():
            from ninport.torch.build import load_pt

            return load_pt(pt_path)

        model = BenchModel(onnx_path=str(onnx_path), input_name=name, item_shape=tuple(shape[1:]),
                           flops_per_image=2.0 * shapes.macs() / shape[0], output_names=list(net.outputs),
                           prototxt=str(deploy), caffemodel=str(caffemodel), module_factory=module)
        report = bench_prepared(model, batches=[int(b) for b in args.batch.split(",")], threads=args.threads,
                                runtimes=args.runtimes.split(","), repeat=args.repeat,
                                progress=lambda msg: print(msg, file=sys.stderr))
        print(format_report(report))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
