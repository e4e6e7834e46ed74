"""Shared fixtures: the published NiN prototxt, its V2 and deploy variants, seeded weights, and a CLI runner.

The V2 and deploy prototxts are made from the gist's V1 text by plain text edits written here, independently
of ninport's upgrade code, so comparing what ninport reads from each is a real check of the upgrade.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

REPO_ROOT = Path(__file__).resolve().parent.parent
NIN_DIR = REPO_ROOT / "reference" / "nin_imagenet"

# V1 enum names used by the gist -> the V2 type strings Caffe's UpgradeV1LayerType maps them to.
GIST_V1_TYPES = {
    "CONVOLUTION": "Convolution",
    "RELU": "ReLU",
    "POOLING": "Pooling",
    "DROPOUT": "Dropout",
    "DATA": "Data",
    "ACCURACY": "Accuracy",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
}

_LR_DECAY = re.compile(
    r"blobs_lr:\s*(\S+)\s*\n\s*blobs_lr:\s*(\S+)\s*\n\s*weight_decay:\s*(\S+)\s*\n\s*weight_decay:\s*(\S+)"
)


def v1_text_to_v2(text: str) -> str:
    """The gist's V1 prototxt rewritten as V2 text, by regexes only."""
    text = re.sub(r"^layers\s*\{", "layer {", text, flags=re.MULTILINE)
    for enum, v2 in GIST_V1_TYPES.items():
        text = re.sub(rf"\btype:\s*{enum}\b", f'type: "{v2}"', text)
    text = _LR_DECAY.sub(r"param { lr_mult: \1 decay_mult: \3 }\n  param { lr_mult: \2 decay_mult: \4 }", text)
    assert "blobs_lr" not in text and "layers {" not in text, "the V1 -> V2 text rewrite missed something"
    return text


def top_level_blocks(text: str, keyword: str = "layers") -> list[tuple[int, int]]:
    """(start, end) offsets of each top-level ``keyword { ... }`` block, found by matching braces.

    Good enough for the gist's file: no braces inside strings or comments.
    """
    spans = []
    depth = 0
    i = 0
    start = None
    opener = re.compile(rf"\b{keyword}\s*\{{")
    while i < len(text):
        if depth == 0:
            m = opener.match(text, i)
            if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                start = i
                depth = 1
                i = m.end()
                continue
        ch = text[i]
        if depth and ch == "{":
            depth += 1
        elif depth and ch == "}":
            depth -= 1
            if depth == 0:
                end = i + 1
                if end < len(text) and text[end] == "\n":
                    end += 1
                spans.append((start, end))
        i += 1
    return spans


def drop_blocks(text: str, predicate: Callable[[str], bool], keyword: str = "layers") -> str:
    """The text without the top-level blocks for which ``predicate(block_text)`` is true."""
    out = []
    last = 0
    for start, end in top_level_blocks(text, keyword):
        if predicate(text[start:end]):
            out.append(text[last:start])
            last = end
    out.append(text[last:])
    return "".join(out)


DEPLOY_HEADER = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 224\ninput_dim: 224\n'


def v1_text_to_deploy(text: str) -> str:
    dropped = re.compile(r"\btype:\s*(DATA|ACCURACY|SOFTMAX_LOSS)\b")
    return DEPLOY_HEADER + drop_blocks(text, lambda block: bool(dropped.search(block)))


@pytest.fixture(scope="session")
def nin_prototxt() -> Path:
    return NIN_DIR / "train_val.prototxt"


@pytest.fixture(scope="session")
def nin_v2_prototxt(nin_prototxt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nin_v2") / "train_val_v2.prototxt"
    path.write_text(v1_text_to_v2(nin_prototxt.read_text()))
    return path


@pytest.fixture(scope="session")
def nin_deploy_prototxt(nin_prototxt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nin_deploy") / "deploy.prototxt"
    path.write_text(v1_text_to_deploy(nin_prototxt.read_text()))
    return path


def _seeded(prototxt: Path, directory: Path, layout: str) -> Path:
    from ninport.caffe.load import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    path = directory / f"nin_seeded_{layout}.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), path, layout=layout, seed=0)
    return path


@pytest.fixture(scope="session")
def nin_weights_v1(nin_prototxt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _seeded(nin_prototxt, tmp_path_factory.mktemp("nin_weights_v1"), "v1")


@pytest.fixture(scope="session")
def nin_weights_v2(nin_prototxt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _seeded(nin_prototxt, tmp_path_factory.mktemp("nin_weights_v2"), "v2")


def _make_runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into output unless told not to; 8.2+ always keeps it apart
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., Result]:
    """``run_cli("inspect", path, "--json")``: run ``ninport`` in-process; returns click's Result."""
    from ninport.cli import main

    runner = _make_runner()

    def run(*args: str | Path) -> Result:
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def write_prototxt(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write prototxt text into the test's tmp dir: ``write_prototxt(text, name="net.prototxt")``."""

    def write(text: str, name: str = "net.prototxt") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
