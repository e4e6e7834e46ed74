"""``ninport bench``: the command over ``ninport.bench.run_bench``; runtimes side by side against the GEMM peak."""

from __future__ import annotations

import json
import sys

import click

from ninport.cli import debug_option, input_shape_option, json_option


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=what) from None
    if not values:
        raise click.BadParameter("give at least one value", param_hint=what)
    return values


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("caffemodel", required=False, type=click.Path(dir_okay=False))
@click.option("--batch", "batches", default="1,16", show_default=True, metavar="N,...", help="Batch sizes.")
@click.option("--threads", type=int, help="Threads for every runtime and the GEMM (default: the CPU count).")
@click.option("--runtimes", default="onnxruntime,openvino,opencv,torch", show_default=True, metavar="NAME,...",
              help="Runtimes to compare; the first is the reference of the ratios and output differences.")
@click.option("--repeat", type=int, default=20, show_default=True, help="Timed rounds per batch size.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed rounds first.")
@click.option("--gemm-size", type=int, default=2048, show_default=True, help="Matrix size of the SGEMM peak.")
@click.option("--settle", type=float, default=0.1, show_default=True, metavar="SECONDS",
              help="Untimed pause after every call, so one runtime's idle threads still spinning (onnxruntime's "
                   "spin for ~65 ms after a run) cannot slow the next.")
@click.option("--compare", "compare", multiple=True, metavar="LABEL=MODEL.onnx",
              help="Another ONNX file of the same net (e.g. `ninport quantize`'s INT8 copy), run by onnxruntime "
                   "and openvino in the same rounds; repeatable.")
@input_shape_option
@json_option
@debug_option
def bench(model: str, caffemodel: str | None, batches: str, threads: int | None, runtimes: str, repeat: int,
          warmup: int, gemm_size: int, settle: float, compare: tuple[str, ...], input_shape: str | None,
          as_json: bool) -> None:
    """Time inference runtimes side by side, against this machine's own SGEMM peak.

    MODEL is an ONNX file, or a prototxt followed by its CAFFEMODEL (exported to ONNX for onnxruntime and
    OpenVINO; OpenCV reads the caffemodel; torch runs the CaffeNet module). Runtimes and the GEMM are
    interleaved round by round, so drift in the machine's speed touches all alike. Reports latency
    percentiles, images/s, GFLOP/s (2 × Caffe's MACs) and each runtime's share of the GEMM peak.

    \b
    Example:
      ninport bench train_val.prototxt nin_imagenet.caffemodel --batch 1,16 --threads 2
      ninport bench nin.onnx --runtimes onnxruntime,opencv --json
      ninport bench nin.onnx --runtimes onnxruntime,openvino,openvino:bf16 --compare int8=nin_int8.onnx
    """
    from ninport.bench import format_report, run_bench

    others: dict[str, str] = {}
    for item in compare:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise click.BadParameter(f"{item!r} is not LABEL=MODEL.onnx", param_hint="--compare")
        others[label] = path
    tty = sys.stderr.isatty() and not as_json
    report = run_bench(
        model, caffemodel, batches=_ints(batches, "--batch"), threads=threads,
        runtimes=[r.strip() for r in runtimes.split(",") if r.strip()], repeat=repeat, warmup=warmup,
        gemm_size=gemm_size, input_shape=input_shape, settle=settle,
        progress=(lambda msg: click.echo(msg, err=True)) if tty else None, compare=others,
    )
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(format_report(report))
