"""``ninport evaluate``: a converted model's top-1/top-5 on a data set, with a report against the paper."""

from __future__ import annotations

import json
import os
import sys

import click

from ninport.cli import debug_option, float_list, json_option, provider_option


@click.command()
@click.argument("model", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, metavar="D",
              help="cifar10, cifar100, svhn, mnist, imagenet, or digits (scikit-learn's bundled 8×8 digits).")
@click.option("--data", "data_path", type=click.Path(), metavar="PATH",
              help="The data set as downloaded: CIFAR batches folder or .tar.gz, SVHN .mat, MNIST idx folder, "
                   "ImageNet folder with val.txt. Not needed for digits.")
@click.option("--split", default="test", show_default=True, metavar="S", help="test (val) or train; svhn: extra.")
@click.option("--crops", type=click.Choice(["center", "10"]), default="center", show_default=True,
              help="Caffe's TEST center crop, or 10 crops (4 corners + center, mirrored) with softmax averaged.")
@click.option("--batch-size", type=int, default=50, show_default=True)
@provider_option
@click.option("--compare", "compare_method", metavar="METHOD",
              help="A row of the paper's table for this data set, e.g. 'NIN + Dropout' (see ninport paper).")
@click.option("--tolerance", type=float, default=0.5, show_default=True, help="For --compare, in percentage points.")
@click.option("--output-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write evaluation.md, evaluation.json and evaluation.png (chart of this run vs the paper) here.")
@click.option("--mean-file", type=click.Path(dir_okay=False), help="Mean image (.binaryproto), instead of the "
              "model's declared one.")
@click.option("--mean-values", metavar="V,V,V", help="Per-channel mean, in the data's channel order.")
@click.option("--scale", type=float, help="Multiply after the mean (Caffe's transform_param scale).")
@click.option("--preprocess", type=click.Choice(["none", "gcn_zca"]), default="none", show_default=True,
              help="gcn_zca: the paper's CIFAR preprocessing, fitted on the train split (needs it in --data).")
@click.option("--limit", type=int, metavar="N", help="Score only the first N images.")
@click.option("--label", type=click.Choice(["fine", "coarse"]), default="fine", show_default=True,
              help="cifar100 only: 100 fine classes or 20 coarse ones.")
@json_option
@debug_option
def evaluate(model: tuple[str, ...], dataset: str, data_path: str | None, split: str, crops: str, batch_size: int,
             provider: str, compare_method: str | None, tolerance: float, output_dir: str | None,
             mean_file: str | None, mean_values: str | None, scale: float | None, preprocess: str,
             limit: int | None, label: str, as_json: bool) -> None:
    """Score MODEL (an .onnx or .pt file, or PROTOTXT CAFFEMODEL) on a data set: top-1/top-5 and error %.

    Images get Caffe's TEST transform: center crop to the model's input, the mean and scale its data layer
    declared (or --mean-file/--mean-values/--scale).

    \b
    Example:
      ninport evaluate nin.onnx --dataset imagenet --data ILSVRC2012_val --mean-file imagenet_mean.binaryproto
      ninport evaluate cifar_nin.onnx --dataset cifar10 --data cifar-10-batches-py --compare "NIN + Dropout" \\
          --output-dir report/
    """
    from ninport.reproduce.evaluate import evaluate as run_evaluation
    from ninport.reproduce.evaluate import write_report

    if output_dir:
        from ninport.outputs import check_outputs
        from ninport.reproduce.evaluate import REPORT_NAME

        check_outputs([os.path.join(output_dir, f"{REPORT_NAME}.{kind}") for kind in ("md", "json", "png")],
                      [*model, data_path, mean_file])
    progress = not as_json and sys.stderr.isatty()
    result = run_evaluation(list(model), dataset, data_path, split=split, crops=crops, batch_size=batch_size,
                            provider=provider, compare_method=compare_method, tolerance=tolerance,
                            mean_file=mean_file, mean_values=float_list(mean_values), scale=scale,
                            preprocess=preprocess, limit=limit, label=label, progress=progress)
    paths = write_report(result, output_dir) if output_dir else None
    if as_json:
        out = result.as_dict()
        out["report"] = paths
        click.echo(json.dumps(out))
        return
    click.echo(f"{result.dataset} {result.split}: {result.count} images, {result.crops} crop(s), "
               f"onnxruntime on {result.provider}, {result.seconds:.1f} s")
    line = f"top-1 accuracy {result.top1:.2f} % (error {result.error:.2f} %)"
    if result.top5 is not None:
        line += f", top-5 accuracy {result.top5:.2f} % (error {result.top5_error:.2f} %)"
    click.echo(line)
    if result.comparison is not None:
        click.echo(result.comparison.describe())
    if paths:
        click.echo(f"report: {paths['md']}, {paths['json']}, {paths['png']}")
