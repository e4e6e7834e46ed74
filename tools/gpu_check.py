"""One run on a GPU host answers the GPU questions: convert NiN (seeded weights), run every GPU provider and
precision, compare each blob with the CPU, and print throughput at batch 1/16/64 against torch CUDA on the same
module and against the device's fp32/fp16 peak (a torch matmul).

    python tools/gpu_check.py [--prototxt reference/nin_imagenet/train_val.prototxt] [--batches 1,16,64]
                              [--repeat 20] [--json]

Exit codes: 0 every blob within its tolerance; 1 some blob is not; 3 no GPU here; 4 a GPU, but onnxruntime cannot
use it (the line says what is missing). Without a GPU nothing is converted or run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_MISMATCH, EXIT_NO_GPU, EXIT_NO_ORT_GPU = 0, 1, 3, 4
NIN = Path(__file__).resolve().parent.parent / "reference" / "nin_imagenet" / "train_val.prototxt"
COMPARE_BATCH = 2
# A blob passes when its error against the float64 forward is within this many times its noise floor: CPU
# onnxruntime's float32 error for fp32 runs, torch's own half-precision error on the device for fp16 runs.
FLOOR_FACTOR = 8.0


def gpu_status() -> tuple[int, str]:
    """(EXIT_OK, "") when onnxruntime can use a GPU here, else the exit code and one line saying why not."""
    from ninport.runtimes.onnxruntime import _driver_problem, gpu_problem

    driver = _driver_problem()
    if driver:
        return EXIT_NO_GPU, f"no GPU: {driver}"
    problem = gpu_problem("cuda")
    if problem:
        return EXIT_NO_ORT_GPU, f"a GPU is here but onnxruntime cannot use it: {problem}"
    return EXIT_OK, ""


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    got = np.asarray(got, np.float64).reshape(ref.shape)
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def _median_seconds(call: Callable[[], object], sync: Callable[[], None], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_peaks(device: str, precisions: Sequence[str], repeat: int) -> dict[str, float]:
    """The device's GEMM rate in FLOP/s per precision: a square torch matmul, TF32 off for fp32."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    n = 4096 if device == "cuda" else 512
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    peaks = {}
    for precision in precisions:
        if precision == "fp16" and device != "cuda":
            continue  # a CPU half GEMM is no peak worth comparing with
        dtype = torch.float16 if precision == "fp16" else torch.float32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = _median_seconds(lambda a=a, b=b: torch.matmul(a, b), sync, repeat)
        peaks[precision] = 2.0 * n**3 / seconds
    return peaks


def run_check(
    prototxt: str | os.PathLike = NIN,
    batches: Sequence[int] = (1, 16, 64),
    repeat: int = 20,
    device: str = "cuda",
    providers: Sequence[str] = ("cuda", "tensorrt"),
    precisions: Sequence[str] = ("fp32", "fp16"),
    say: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> dict:
    """Convert ``prototxt`` with seeded weights and check it on ``device``; returns the report (see ``format_report``).

    ``device="cpu"`` with ``providers=("cpu",)`` runs the same steps without a GPU (the tests do)."""
    import torch

    from ninport import runtimes
    from ninport.caffe import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel
    from ninport.convert import convert
    from ninport.errors import NinportError
    from ninport.torch.build import load_pt

    torch.backends.cudnn.allow_tf32 = False  # torch's fp32 convolutions in true float32, like the check's
    torch_on_device = device != "cuda" or torch.cuda.is_available()
    sync = torch.cuda.synchronize if device == "cuda" and torch_on_device else (lambda: None)
    report: dict = {"device": device, "rows": [], "throughput": [], "unavailable": {}, "peaks": {}}
    if device == "cuda" and torch_on_device:
        report["device"] = torch.cuda.get_device_name(0)
    elif not torch_on_device:
        report["unavailable"][f"torch-{device}"] = ("torch sees no CUDA device (a CPU build of torch?): no torch "
                                                    "comparison, no fp16 floor, no peak")
    with tempfile.TemporaryDirectory(prefix="ninport-gpu-check-") as work:
        say(f"converting {prototxt} with seeded weights")
        caffemodel = os.path.join(work, "seeded.caffemodel")
        write_seeded_caffemodel(read_net(prototxt), caffemodel, layout="v2", seed=0)
        onnx_path = os.path.join(work, "model.onnx")
        result = convert(prototxt, caffemodel, output=onnx_path)
        module = load_pt(result.pt_path).eval()
        (input_name,) = module.input_names
        item = tuple(module.input_shapes[input_name][1:])
        flops = 2.0 * result.macs / (result.inputs[input_name][0] or 1)
        report["model"] = {"prototxt": os.fspath(prototxt), "flops_per_image": flops}
        x = np.random.default_rng(0).standard_normal((COMPARE_BATCH, *item)).astype(np.float32)

        # The truth: a float64 forward on the CPU; the floors: float32 onnxruntime on the CPU, half torch on device.
        with torch.no_grad():
            f64 = {k: v.numpy() for k, v in copy.deepcopy(module).double().forward_blobs(
                torch.from_numpy(x.astype(np.float64))).items()}
        import onnx

        graph_tensors = {out for node in onnx.load(onnx_path).graph.node for out in node.output}
        blobs = [b for b in f64 if b in graph_tensors and b != input_name]
        cpu = runtimes.load("onnxruntime", onnx_path, provider="cpu", extra_outputs=blobs).run({input_name: x})
        floors = {"fp32": {b: max(_rel(cpu[b], f64[b]), float(np.finfo(np.float32).eps)) for b in blobs}}
        torch_modules = {}
        for precision in precisions:
            if (precision == "fp16" and device != "cuda") or not torch_on_device:
                continue
            dtype = torch.float16 if precision == "fp16" else torch.float32
            torch_modules[precision] = copy.deepcopy(module).to(device=device, dtype=dtype)
            with torch.inference_mode():
                got = torch_modules[precision].forward_blobs(torch.from_numpy(x).to(device, dtype))
            errors = {b: _rel(got[b].float().cpu().numpy(), f64[b]) for b in blobs}
            report["rows"].append(_row(f"torch-{device}", precision, blobs, errors, None))
            if precision == "fp16":
                floors["fp16"] = {b: max(e, float(np.finfo(np.float16).eps)) for b, e in errors.items()}

        for provider in providers:
            for precision in precisions:
                label = f"onnxruntime-{provider}"
                options = {"cuda_options": {"use_tf32": 0}} if precision == "fp32" and provider != "cpu" else {}
                try:
                    checked = runtimes.load("onnxruntime", onnx_path, provider=provider, precision=precision,
                                            extra_outputs=blobs, **options)
                    got = checked.run({input_name: x})
                except NinportError as exc:
                    report["unavailable"][f"{label} {precision}"] = str(exc)
                    continue
                errors = {b: _rel(got[b], f64[b]) for b in blobs}
                floor = floors.get(precision)
                report["rows"].append(_row(label, precision, blobs, errors, floor, cpu=cpu, got=got))
                say(f"{label} {precision}: throughput")
                fast = runtimes.load("onnxruntime", onnx_path, provider=provider, precision=precision, **options)
                for batch in batches:
                    xb = np.random.default_rng(batch).standard_normal((batch, *item)).astype(np.float32)
                    binding = fast.bind({input_name: xb})  # outputs stay on the device
                    seconds = _median_seconds(lambda f=fast, b=binding: f.run_bound(b), sync, repeat)
                    report["throughput"].append(_speed(label, precision, batch, seconds, flops))
                del checked, fast  # end the sessions (and their CPU threads) before the next runtime's timings
        for precision, tmodule in torch_modules.items():
            dtype = torch.float16 if precision == "fp16" else torch.float32
            for batch in batches:
                xb = torch.from_numpy(np.random.default_rng(batch).standard_normal((batch, *item)).astype(np.float32))
                xb = xb.to(device, dtype)

                def call(m=tmodule, xb=xb):
                    with torch.inference_mode():
                        return m(xb)

                seconds = _median_seconds(call, sync, repeat)
                report["throughput"].append(_speed(f"torch-{device}", precision, batch, seconds, flops))
    if torch_on_device:
        report["peaks"] = measure_peaks(device, precisions, max(3, repeat // 4))
    for entry in report["throughput"]:
        peak = report["peaks"].get(entry["precision"])
        entry["share_of_peak"] = entry["flops_per_s"] / peak if peak else None
    report["ok"] = all(row["ok"] is not False for row in report["rows"])
    return report


def _row(label: str, precision: str, blobs: list[str], errors: dict[str, float], floor: dict | None,
         cpu: dict | None = None, got: dict | None = None) -> dict:
    """One runtime's comparison: the worst blob against the float64 forward, its tolerance, and the first blob
    (in execution order) beyond its tolerance, if any."""
    worst = max(blobs, key=lambda b: errors[b] / (floor[b] if floor else 1.0))
    first_bad = None
    if floor:
        first_bad = next((b for b in blobs if errors[b] > FLOOR_FACTOR * floor[b]), None)
    vs_cpu = max(_rel(got[b], cpu[b].astype(np.float64)) for b in blobs) if cpu is not None and got else None
    return {"runtime": label, "precision": precision, "worst_blob": worst, "error": errors[worst],
            "tolerance": FLOOR_FACTOR * floor[worst] if floor else None, "max_rel_vs_cpu": vs_cpu,
            "first_divergence": first_bad, "ok": None if not floor else first_bad is None,
            "blobs": len(blobs)}


def _speed(label: str, precision: str, batch: int, seconds: float, flops: float) -> dict:
    return {"runtime": label, "precision": precision, "batch": batch, "ms": seconds * 1e3,
            "images_per_s": batch / seconds, "flops_per_s": flops * batch / seconds}


def format_report(report: dict) -> str:
    lines = [f"device: {report['device']}",
             "peak (torch matmul): " + (", ".join(f"{p} {v / 1e12:.2f} TFLOP/s" for p, v in report["peaks"].items())
                                        or "not measured"),
             f"model: {report['model']['prototxt']} (seeded weights), "
             f"{report['model']['flops_per_image'] / 1e9:.2f} GFLOP per image",
             "",
             f"blobs against a float64 forward (tolerance: {FLOOR_FACTOR:g}x the floor of the precision)",
             f"{'runtime':<24}{'precision':<10}{'worst blob':<18}{'error':>10}{'tolerance':>11}{'vs CPU':>10}  verdict"]
    for row in report["rows"]:
        tol = f"{row['tolerance']:.2g}" if row["tolerance"] is not None else "(floor)"
        vs_cpu = f"{row['max_rel_vs_cpu']:.2g}" if row["max_rel_vs_cpu"] is not None else "-"
        verdict = {None: "reference" if row["runtime"].startswith("torch") else "not judged (no floor)", True: "ok",
                   False: f"FAILS from blob {row['first_divergence']}"}[row["ok"]]
        lines.append(f"{row['runtime']:<24}{row['precision']:<10}{row['worst_blob']:<18}{row['error']:>10.2g}"
                     f"{tol:>11}{vs_cpu:>10}  {verdict}")
    for name, why in report["unavailable"].items():
        lines.append(f"{name:<34}unavailable: {why}")
    batches = sorted({t["batch"] for t in report["throughput"]})
    lines += ["", "throughput: images/s (share of the precision's peak)",
              f"{'runtime':<24}{'precision':<10}" + "".join(f"{'batch ' + str(b):>20}" for b in batches)]
    keys = list(dict.fromkeys((t["runtime"], t["precision"]) for t in report["throughput"]))
    for runtime, precision in keys:
        cells = []
        for b in batches:
            entry = next((t for t in report["throughput"] if (t["runtime"], t["precision"], t["batch"]) ==
                          (runtime, precision, b)), None)
            share = f" ({entry['share_of_peak']:.0%})" if entry and entry["share_of_peak"] else ""
            cells.append(f"{entry['images_per_s']:.1f}{share}" if entry else "-")
        lines.append(f"{runtime:<24}{precision:<10}" + "".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prototxt", default=str(NIN))
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", dest="as_json")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches: {args.batches!r} is not a comma-separated list of integers")
    code, why = gpu_status()
    if code != EXIT_OK:
        if args.as_json:
            print(json.dumps({"ok": False, "exit_code": code, "reason": why}))
        else:
            print(why)
        return code
    report = run_check(args.prototxt, batches=batches, repeat=args.repeat)
    print(json.dumps(report) if args.as_json else format_report(report))
    return EXIT_OK if report["ok"] else EXIT_MISMATCH


if __name__ == "__main__":
    sys.exit(main())
