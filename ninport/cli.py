"""The ``ninport`` command line: thin click commands over the library, one function call each.

Library errors (``ninport.errors``) become one line on stderr and exit status 1; ``--debug`` shows the
traceback instead. Imports of torch and onnx happen inside the commands that need them.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import click

from ninport import __version__
from ninport.errors import NinportError

# Commands that live in their own modules, imported only when invoked (or listed by --help), so that
# ``ninport inspect`` never pays for torch. name -> "module:attribute"
LAZY_COMMANDS = {
    "verify": "ninport.commands.verify:verify",
    "paper": "ninport.commands.paper:paper",
    "validate": "ninport.commands.paper:validate",
    "evaluate": "ninport.commands.evaluate:evaluate",
    "train": "ninport.commands.train:train",
    "bench": "ninport.commands.bench:bench",
    "layers": "ninport.commands.layers:layers",
    "quantize": "ninport.commands.quantize:quantize",
}


class _Group(click.Group):
    """Turns every failure into one clean line (and exit 1) unless --debug is given; loads lazy commands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {n for n in LAZY_COMMANDS if self._lazy(n) is not None})

    def get_command(self, ctx: click.Context, name: str):
        return super().get_command(ctx, name) or self._lazy(name)

    @staticmethod
    def _lazy(name: str):
        target = LAZY_COMMANDS.get(name)
        if target is None:
            return None
        import importlib
        import importlib.util

        module_name, attr = target.split(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        return getattr(importlib.import_module(module_name), attr, None)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except NinportError as exc:
            if _debug(ctx):
                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            _quiet_broken_pipe()
            ctx.exit(BROKEN_PIPE_STATUS)
        except KeyboardInterrupt:
            click.echo("Interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug of ours: still one line, with a way to see more
            if _debug(ctx):
                traceback.print_exc()
            click.echo(f"Error: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
                       err=True)
            ctx.exit(2)


# What a shell reports for a process ended by SIGPIPE (128 + 13): `ninport inspect ... | head` ends quietly.
BROKEN_PIPE_STATUS = 141


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away: point stdout at /dev/null so that the final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("ninport.debug")) or "--debug" in sys.argv


def _set_debug(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.meta["ninport.debug"] = True
    return value


debug_option = click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug, is_eager=True,
                            help="Show the full traceback on errors.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
input_shape_option = click.option("--input-shape", metavar="N,C,H,W",
                                  help="Input shape, overriding the data layer's (or name=N,C,H,W;...).")
phase_option = click.option("--phase", type=click.Choice(["test", "train"], case_sensitive=False), default="test",
                            show_default=True, help="Caffe phase whose include/exclude rules apply.")
caffe_proto_option = click.option("--caffe-proto", type=click.Path(), metavar="PATH",
                                  help="A Caffe fork's caffe.proto: read the files with the fork's schema.")
provider_option = click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto",
                               show_default=True, help="onnxruntime execution provider.")


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="ninport")
@debug_option
def main() -> None:
    """Read Caffe models as published; convert them to PyTorch and ONNX; run them.

    \b
    Example:
      ninport inspect train_val.prototxt
      ninport convert train_val.prototxt nin_imagenet.caffemodel -o nin.onnx
      ninport run nin.onnx cat.jpg --top-k 5
    """


@main.command()
@click.argument("prototxt", type=click.Path())
@click.argument("caffemodel", required=False, type=click.Path())
@input_shape_option
@phase_option
@caffe_proto_option
@json_option
@debug_option
def inspect(prototxt: str, caffemodel: str | None, input_shape: str | None, phase: str, caffe_proto: str | None,
            as_json: bool) -> None:
    """Show each layer's shapes, parameters and MACs in Caffe's arithmetic.

    With a CAFFEMODEL, also check that its weights fit the net.

    \b
    Example:
      ninport inspect train_val.prototxt --input-shape 1,3,227,227
    """
    from ninport.inspect import format_table, format_trace, inspect_net, spatial_trace

    report, net, shapes = inspect_net(prototxt, caffemodel, input_shape=input_shape, phase=phase.upper(),
                                      caffe_proto=caffe_proto)
    if as_json:
        click.echo(json.dumps(report))
        return
    inputs = ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in report["inputs"].items())
    click.echo(f"net {report['name']!r} ({net.phase} phase), input {inputs}")
    if net.dialects is not None:
        click.echo(f"dialect: {net.dialects.describe()}")
    click.echo(format_table(report))
    click.echo(f"total: {report['total_params']:,} learnable parameters, {report['total_macs']:,} MACs")
    batch = next(iter(net.inputs.values()), (1,))[0] if net.inputs else 1
    if batch > 1:
        click.echo(f"       {report['total_macs'] // batch:,} MACs per item of the batch of {batch}")
    click.echo(f"spatial trace: {format_trace(spatial_trace(net, shapes))}")
    click.echo(f"outputs: {', '.join(net.outputs)}")
    if caffemodel:
        click.echo(f"weights: {len([x for x in net.layers if x.blobs])} layers matched in {caffemodel}, all shapes fit")


@main.command()
@click.argument("prototxt", type=click.Path())
@click.argument("caffemodel", type=click.Path())
@click.option("-o", "--output", type=click.Path(),
              help="ONNX file to write (default: CAFFEMODEL's name with .onnx); the .pt goes beside it.")
@input_shape_option
@phase_option
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17 or newer).")
@click.option("--static-batch", is_flag=True, help="Fix the batch size instead of a dynamic batch axis.")
@click.option("--fp16", is_flag=True, help="Write float16 weights (float32 inputs and outputs).")
@click.option("--rtol", type=float, default=1e-5, show_default=True,
              help="Fixed relative floor of the parity check: onnxruntime's output passes when its distance from "
                   "a float64 torch forward (max abs / max |float64|) is at most max(RTOL, 10 × the float32 torch "
                   "module's own distance).")
@click.option("--dynamic-hw", is_flag=True,
              help="Symbolic input height and width: one file for any image size (refused, naming the layer, "
                   "when a layer pins the size).")
@click.option("--verify", "run_verify", is_flag=True,
              help="Afterwards, compare every blob across torch, the ONNX file and OpenCV (see `ninport verify`).")
@caffe_proto_option
@json_option
@debug_option
@click.pass_context
def convert(ctx: click.Context, prototxt: str, caffemodel: str, output: str | None, input_shape: str | None,
            phase: str, opset: int, static_batch: bool, fp16: bool, rtol: float, dynamic_hw: bool, run_verify: bool,
            caffe_proto: str | None, as_json: bool) -> None:
    """Convert a Caffe model to ONNX (checked in onnxruntime) and to a PyTorch .pt file.

    \b
    Example:
      ninport convert train_val.prototxt nin_imagenet.caffemodel -o nin.onnx
    """
    from ninport.convert import convert as run_convert

    if not rtol > 0:
        raise NinportError(f"--rtol must be positive, got {rtol:g}")
    result = run_convert(prototxt, caffemodel, output, input_shape=input_shape, phase=phase.upper(), opset=opset,
                         static_batch=static_batch, caffe_proto=caffe_proto, fp16=fp16, tolerance=rtol,
                         dynamic_hw=dynamic_hw)
    report = None
    if run_verify:
        from ninport.verify import verify as verify_net

        report = verify_net(prototxt, caffemodel, onnx_path=result.onnx_path, input_shape=input_shape,
                            phase=phase.upper(), caffe_proto=caffe_proto, rtol=rtol)
    if as_json:
        out = result.as_dict()
        if report is not None:
            out["verify"] = report.as_dict()
        click.echo(json.dumps(out))
    else:
        _print_convert(result, report)
    if report is not None and not report.ok:
        ctx.exit(1)


def _print_convert(result, report) -> None:
    from ninport.inspect import format_trace

    inputs = ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in result.inputs.items())
    hw = ", any height and width" if result.dynamic_hw else ""
    click.echo(f"input: {inputs} ({'dynamic' if result.dynamic_batch else 'static'} batch{hw})")
    for case in result.sizes_checked:
        shapes = ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in case["input"].items())
        click.echo(f"checked at {shapes} against a net built for that size: relative {case['rel']:.3g}")
    click.echo(f"spatial trace: {format_trace(result.trace)}")
    click.echo(f"parameters: {result.params:,}   MACs: {result.macs:,}")
    for p in result.parity:
        click.echo(f"parity onnxruntime vs float64 torch, {p.blob} at batch {p.batch}: relative {p.rel:.3g} "
                   f"(floor {p.floor:.3g}, tolerance {p.tolerance:.3g}), max abs {p.max_abs:.3g}")
    precision = "float16" if result.fp16 else "float32"
    click.echo(f"wrote {result.onnx_path} (opset {result.opset}, {precision}) and {result.pt_path} "
               f"in {result.seconds:.2f} s")
    if report is not None:
        from ninport.verify import format_report

        click.echo(format_report(report))


def float_list(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


@main.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", type=int, default=5, show_default=True, help="How many classes to show per input.")
@click.option("--labels", type=click.Path(), help="Class names, one per line (e.g. synset_words.txt).")
@click.option("--mean-file", type=click.Path(), help="Mean image (.binaryproto) to subtract.")
@click.option("--mean-values", metavar="B,G,R", help="Per-channel mean to subtract, in BGR order.")
@click.option("--scale", type=float, help="Multiply inputs by this after the mean (Caffe's transform scale).")
@click.option("--batch-size", type=int, default=16, show_default=True)
@provider_option
@json_option
@debug_option
def run(model: str, inputs: tuple[str, ...], top_k: int, labels: str | None, mean_file: str | None,
        mean_values: str | None, scale: float | None, batch_size: int, provider: str, as_json: bool) -> None:
    """Classify images (JPEG/PNG, Caffe's test-time preprocessing) or .npy tensors with an ONNX model.

    \b
    Example:
      ninport run nin.onnx cat.jpg dog.png --labels synset_words.txt --mean-values 104,117,123
    """
    from ninport.run import run_model

    if mean_file and mean_values:
        raise click.UsageError("give --mean-file or --mean-values, not both")
    progress = not as_json and sys.stderr.isatty() and len(inputs) > batch_size
    report = run_model(model, list(inputs), top_k=top_k, labels=labels, mean_file=mean_file,
                       mean_values=float_list(mean_values), scale=scale, batch_size=batch_size, provider=provider,
                       progress=progress)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"provider: {report['provider']}   output: {report['output']}")
    for item in report["results"]:
        click.echo(item["input"])
        for rank, entry in enumerate(item["top_k"], 1):
            label = f"  {entry['label']}" if entry["label"] else ""
            click.echo(f"  {rank}. class {entry['class']:>4}  score {entry['score']:10.4f}  "
                       f"p {entry['prob']:.4f}{label}")


def console_main() -> None:
    """The ``ninport`` console script: ``main``, then a fast exit once torch is loaded.

    Tearing torch's interpreter state down costs about half a second on every command that imported it. By then
    every output file has been written whole (atomic renames) and closed, so the process can end at once after
    flushing its streams. Only the console script does this; ``main`` under click's test runner exits normally.
    """
    try:
        main(prog_name="ninport")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
        code = BROKEN_PIPE_STATUS
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
