"""The support table: ``ninport layers`` lists every upstream Caffe type with a status made from the live
registries, and docs/layers.md is exactly its Markdown, so the docs cannot drift from the code."""

from __future__ import annotations

import json
from pathlib import Path

from ninport.caffe.shapes import RULES
from ninport.torch.registry import converters
from ninport.torch.support import STATUSES, UPSTREAM_TYPES, format_markdown, support_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "layers.md"


def test_docs_layers_md_is_the_generated_table():
    expected = format_markdown(support_table(include_plugins=False))
    assert DOCS.read_text() == expected, "docs/layers.md is stale: run `ninport layers --markdown > docs/layers.md`"


def test_cli_markdown_is_what_the_docs_hold(run_cli):
    result = run_cli("layers", "--markdown")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == DOCS.read_text()


def test_every_upstream_type_is_listed_once_with_a_known_status(run_cli):
    rows = json.loads(run_cli("layers", "--json").stdout)
    types = [r["type"] for r in rows]
    assert len(types) == len(set(types))
    assert set(UPSTREAM_TYPES) <= set(types)
    assert {r["status"] for r in rows} <= set(STATUSES)


def test_status_follows_the_registries():
    known = converters()
    for row in support_table():
        if row.type == "Input":
            continue
        converted = row.type in known and row.type in RULES
        assert (row.status == "converted") == converted, row
        if row.status == "shape only":
            assert row.type in RULES and row.type not in known


def test_the_layers_of_the_issue_are_converted():
    # Every inference layer of upstream Caffe the zoo needs (issue 4); a regression here shows in the docs too.
    wanted = {
        "Convolution", "Deconvolution", "Pooling", "InnerProduct", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH",
        "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold", "Clip", "Swish", "LRN", "MVN", "BatchNorm", "Scale",
        "Bias", "Eltwise", "Concat", "Slice", "Split", "Flatten", "Reshape", "Crop", "Softmax", "ArgMax",
        "Reduction", "Tile", "Embed", "Input", "Dropout", "Silence", "Parameter",
    }
    status = {r.type: r.status for r in support_table(include_plugins=False)}
    assert {t for t in wanted if status.get(t) != "converted"} == set()


def test_text_table_lists_types_and_statuses(run_cli):
    result = run_cli("layers")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    # Python converts only as py-faster-rcnn's proposal layer; the row says so.
    assert any(line.startswith("Python") and "proposal_layer" in line and "plugin" in line for line in lines)
    assert any(line.startswith("Deconvolution") and "converted" in line for line in lines)


def test_markdown_and_json_together_is_a_usage_error(run_cli):
    result = run_cli("layers", "--markdown", "--json")
    assert result.exit_code == 2 and "not both" in result.stderr
