"""``ninport train``: train from a Caffe solver with Caffe's SGD semantics; snapshots are Caffe files."""

from __future__ import annotations

import json
import sys

import click

from ninport.cli import debug_option, json_option


@click.command()
@click.argument("solver", type=click.Path(dir_okay=False))
@click.option("-o", "--output-dir", type=click.Path(file_okay=False),
              help="Where snapshots, deploy.prototxt, curves.png and log.csv go (default: snapshot_prefix's folder).")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Data-parallel processes on this machine (each reads batch_size items, as Caffe's multi-GPU).")
@click.option("--resume", type=click.Path(dir_okay=False),
              help="Continue from a .solverstate (or the .caffemodel beside one), as caffe train --snapshot.")
@click.option("--weights", metavar="CAFFEMODEL[,...]", multiple=True,
              help="Start from these weights, matched by layer name (caffe train --weights).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when available and the solver's solver_mode is GPU.")
@click.option("--threads", type=int,
              help="torch threads per process on CPU (default: 1 for small nets, else the cores / nproc).")
@click.option("--seed", type=int, metavar="N",
              help="Random seed instead of the solver's random_seed (fillers, dropout, transforms).")
@json_option
@debug_option
def train(solver: str, output_dir: str | None, nproc: int, resume: str | None, weights: tuple[str, ...],
          device: str, threads: int | None, seed: int | None, as_json: bool) -> None:
    """Train the net a Caffe SOLVER names, as Caffe's SGD solver would.

    Data layers name a data set in data_param's source: "digits", "cifar10:PATH",
    "cifar10:PATH?preprocess=gcn_zca", "cifar100:PATH", "svhn:PATH", "mnist:PATH", "imagenet:PATH".
    Under torchrun (RANK and WORLD_SIZE set) each launched process is one rank.

    \b
    Example:
      ninport train reference/nin_digits/solver.prototxt --output-dir runs/digits
      ninport train solver.prototxt --nproc 2 --json
      ninport train reference/nin_digits/solver_fc.prototxt --seed 3 --output-dir runs/fc3
      ninport train solver.prototxt --resume runs/digits/nin_digits_iter_500.solverstate
      torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m ninport.cli train SOLVER
    """
    from ninport.reproduce.train import train as run_train

    progress = not as_json and sys.stderr.isatty()
    from ninport.outputs import check_folder, protecting

    if output_dir:
        check_folder(output_dir)
    with protecting([solver, resume, *weights]):  # snapshots never replace the files training reads
        metrics = run_train(solver, output_dir=output_dir, nproc=nproc, resume=resume, weights=list(weights),
                            progress=progress, device=device, threads=threads, seed=seed)
    if not metrics:  # a non-zero rank under torchrun: rank 0 reports
        return
    if as_json:
        click.echo(json.dumps(metrics))
        return
    done = metrics["iterations"] - metrics["start_iteration"]
    click.echo(f"trained {metrics['net']!r}: {done} iteration(s), now at {metrics['iterations']}, in "
               f"{metrics['seconds']:.1f} s ({metrics['nproc']} process(es), global batch {metrics['global_batch']}, "
               f"{metrics['device']})")
    click.echo(f"train loss (smoothed): {metrics['train_loss']:.4g}")
    if metrics["test_accuracy"] is not None:
        click.echo(f"test accuracy: {metrics['test_accuracy']:.4f}" +
                   (f"   test loss: {metrics['test_loss']:.4g}" if metrics["test_loss"] is not None else ""))
    for name in ("snapshot", "solverstate", "deploy", "curves", "log"):
        if metrics.get(name):
            click.echo(f"{name + ':':13} {metrics[name]}")
