"""``ninport layers``: the support table, every Caffe layer type with its status and notes."""

from __future__ import annotations

import json

import click

from ninport.cli import debug_option, json_option


@click.command()
@click.option("--markdown", is_flag=True, help="Print the table as Markdown (docs/layers.md is this output).")
@json_option
@debug_option
def layers(markdown: bool, as_json: bool) -> None:
    """List every Caffe layer type: converted, shape only, deploy view, or unsupported, with notes.

    Types registered by plugins (the ninport.layers entry points) are included and marked.

    \b
    Example:
      ninport layers
      ninport layers --markdown > docs/layers.md
    """
    from ninport.torch.support import format_markdown, format_text, support_table

    if markdown and as_json:
        raise click.UsageError("give --markdown or --json, not both")
    rows = support_table()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows]))
    elif markdown:
        click.echo(format_markdown(rows), nl=False)
    else:
        click.echo(format_text(rows))
