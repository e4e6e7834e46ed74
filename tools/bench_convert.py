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

The weights are seeded (the real ones cannot be downloaded here) and live in a temporary directory.
"""

from __future__ import annotations

import argparse
import collections
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved conversion runs (default 5)")
    parser.add_argument("--repeat", type=int, default=20, help="interleaved inference rounds per batch")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--runtimes", default="onnxruntime,opencv,openvino,torch",
                        help="the first is the reference of the ratios")
    args = parser.parse_args(argv)

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
