"""``ninport paper`` and ``ninport validate``: the paper's tables, and a reproduced figure against one row.

Both read ``reference/paper/nin_tables.json`` and import neither torch nor numpy.
"""

from __future__ import annotations

import json

import click

from ninport.cli import debug_option, json_option


@click.command()
@click.option("--dataset", metavar="D", help="Only this data set: cifar10, cifar100, svhn, mnist or imagenet.")
@json_option
@debug_option
def paper(dataset: str | None, as_json: bool) -> None:
    """Print the Network In Network paper's figures: Tables 1-5 (test error %), the figures its running text
    gives (§4.2, §4.6; marked as such), and the ImageNet gist's top-1.

    Each row carries its source (PDF version, page, table or section) and what it was checked against; see
    reference/paper/SOURCE.md.

    \b
    Example:
      ninport paper --dataset cifar10
      ninport paper --json
    """
    from ninport.reproduce.tables import format_rows, rows_for

    rows = rows_for(dataset)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows]))
        return
    click.echo(format_rows(rows))


@click.command()
@click.option("--dataset", required=True, metavar="D", help="cifar10, cifar100, svhn, mnist or imagenet.")
@click.option("--method", required=True, metavar="M", help="The table's row, e.g. 'NIN + Dropout' (case, spaces "
              "and '+' do not matter).")
@click.option("--value", required=True, type=float, metavar="V",
              help="Your figure, in the row's metric (test error % for the tables, top-1 accuracy % for imagenet).")
@click.option("--tolerance", type=float, default=0.5, show_default=True, metavar="T",
              help="Largest accepted |delta|, in percentage points.")
@json_option
@debug_option
def validate(dataset: str, method: str, value: float, tolerance: float, as_json: bool) -> None:
    """Compare a reproduced figure with the paper's row: delta and verdict.

    Exit status 0 within the tolerance, 1 outside it, 2 for an unknown data set or method (the valid ones
    are listed).

    \b
    Example:
      ninport validate --dataset cifar10 --method "NIN + Dropout" --value 10.6
    """
    from ninport.errors import NinportError
    from ninport.reproduce.tables import compare

    try:
        result = compare(dataset, method, value, tolerance)
    except NinportError as exc:  # bad input must not look like "outside the tolerance" (exit 1)
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(2) from None
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(result.describe())
        click.echo(f"source: {result.row.source}")
    if not result.within:
        raise click.exceptions.Exit(1)
