"""``ninport verify``: the command over ``ninport.verify.verify``; exit 0 when every blob agrees, else 1."""

from __future__ import annotations

import json
import sys

import click

from ninport.cli import caffe_proto_option, debug_option, input_shape_option, json_option, phase_option


@click.command()
@click.argument("prototxt", type=click.Path(dir_okay=False))
@click.argument("caffemodel", type=click.Path(dir_okay=False))
@click.option("--input", "input_path", metavar="FILE.npy|IMAGE",
              help="Input tensor (.npy, or .npz by input name) or an image (Caffe's test-time preprocessing); "
                   "default: a seeded N(0,1) tensor of the net's input shape.")
@click.option("--reference", default="auto", show_default=True, metavar="opencv|REF.npz|none",
              help="What the torch module is checked against: OpenCV's Caffe importer, or a .npz of blobs keyed "
                   "by Caffe blob name (from pycaffe); auto = opencv when installed.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False),
              help="ONNX file to check (only read; default: export the net in memory).")
@click.option("--runtimes", metavar="NAME,...",
              help="ONNX runtimes: onnxruntime, onnxruntime-cuda, openvino, opencv-onnx, or none "
                   "(default: all, those not installed reported unavailable).")
@click.option("--rtol", type=float, default=1e-5, show_default=True,
              help="Fixed relative floor: a blob passes when its distance from a float64 forward of the torch "
                   "module (max abs / max |float64|) is at most max(RTOL, 10 × the float32 torch module's own "
                   "distance there).")
@click.option("--fp16", is_flag=True, help="Run the runtimes on a float16 copy of the ONNX model.")
@click.option("--fp16-rtol", type=float, default=1e-2, show_default=True,
              help="Fixed relative floor of float16 runtimes (in place of --rtol).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the default input.")
@input_shape_option
@phase_option
@caffe_proto_option
@json_option
@debug_option
@click.pass_context
def verify(ctx: click.Context, prototxt: str, caffemodel: str, input_path: str | None, reference: str,
           onnx_path: str | None, runtimes: str | None, rtol: float, fp16: bool, fp16_rtol: float, seed: int,
           input_shape: str | None, phase: str, caffe_proto: str | None, as_json: bool) -> None:
    """Compare every blob across the torch module, ONNX runtimes and a reference; name the first divergence.

    Every float32 result is judged against a float64 forward of the torch module: the reference (OpenCV's
    Caffe importer or a pycaffe .npz) at every Caffe blob, each ONNX runtime at every blob version. Exit
    status 0 when all pass (see --rtol), 1 otherwise.

    \b
    Example:
      ninport verify train_val.prototxt nin_imagenet.caffemodel --input-shape 1,3,224,224
      ninport verify deploy.prototxt model.caffemodel --reference caffe_blobs.npz --onnx model.onnx
    """
    from ninport.verify import format_report
    from ninport.verify import verify as run_verify

    tty = sys.stderr.isatty() and not as_json
    report = run_verify(
        prototxt, caffemodel, input=input_path, reference=reference, onnx_path=onnx_path, runtimes=runtimes,
        rtol=rtol, input_shape=input_shape, phase=phase.upper(), caffe_proto=caffe_proto, fp16=fp16,
        fp16_rtol=fp16_rtol, seed=seed,
        progress=(lambda step: click.echo(f"running {step}…", err=True)) if tty else None,
    )
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(format_report(report))
    if not report.ok:
        ctx.exit(1)
