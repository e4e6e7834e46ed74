"""``ninport quantize``: a float32 ONNX model → INT8 / bfloat16 / float16, checked against float32 first."""

from __future__ import annotations

import sys

import click

from ninport.cli import debug_option, json_option


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="The reduced-precision ONNX file to write.")
@click.option("--precision", type=click.Choice(["int8", "bf16", "fp16"]), default="int8", show_default=True,
              help="int8: static QDQ (per-channel weights); bf16: bfloat16 weights, bf16 compute in OpenVINO; "
                   "fp16: float16 throughout.")
@click.option("--calibrate", metavar="DATASET[:PATH]",
              help="Calibrate on a data set's train split and verify on its test split (e.g. digits, "
                   "cifar10:cifar-10-batches-py).")
@click.option("--images", type=click.Path(), metavar="DIR", help="Calibrate and verify on a folder of images.")
@click.option("--count", type=int, default=200, show_default=True, help="Calibration inputs.")
@click.option("--eval-count", type=int, default=500, show_default=True, help="Verification inputs (at most).")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="How INT8 activation ranges come from the calibration data.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration choice.")
@json_option
@debug_option
def quantize(model: str, output: str, precision: str, calibrate: str | None, images: str | None, count: int,
             eval_count: int, method: str, seed: int, as_json: bool) -> None:
    """Write a reduced-precision copy of a float32 ONNX model, verified against it.

    Inputs get the model's own Caffe preprocessing (from the metadata `ninport convert` wrote). Without
    --calibrate or --images, seeded inputs are used, and the output says so. Every blob of the result is
    compared with float32, and the final scores' top-1/top-5 agreement (and accuracy, with labels) reported.

    \b
    Example:
      ninport quantize digits.onnx -o digits_int8.onnx --precision int8 --calibrate digits
      ninport quantize nin.onnx -o nin_bf16.onnx --precision bf16 --images val_images/
    """
    from ninport.onnx.quantize import format_result, result_json
    from ninport.onnx.quantize import quantize as run_quantize

    tty = sys.stderr.isatty() and not as_json
    result = run_quantize(model, output, precision=precision, calibrate=calibrate, images=images, count=count,
                          eval_count=eval_count, method=method, seed=seed,
                          say=(lambda msg: click.echo(msg, err=True)) if tty else None)
    click.echo(result_json(result) if as_json else format_result(result))
