"""Read Caffe text files (prototxt) into protobuf messages, with file and line in every error.

Besides the message itself, the reader reports where each top-level ``layer``/``layers`` block starts, so later
stages can name a line when they complain about a layer, and can interleave files that mix both keywords.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from google.protobuf import text_format
from google.protobuf.message import Message

from ninport.errors import ParseError

_TOKEN = re.compile(
    r'"(?:[^"\\\n]|\\.)*"'  # double-quoted string
    r"|'(?:[^'\\\n]|\\.)*'"  # single-quoted string
    r"|#[^\n]*"  # comment
    r"|[{}<>]"  # block delimiters
    r"|[A-Za-z_][A-Za-z0-9_]*"  # identifier
    r"|\n"
)


@dataclass(frozen=True)
class LayerBlock:
    """Where a top-level layer block starts: its keyword (``layer`` or ``layers``) and its 1-based line."""

    keyword: str
    line: int


def scan_layer_blocks(text: str) -> list[LayerBlock]:
    """Find the top-level ``layer {`` and ``layers {`` blocks of a NetParameter text, in file order."""
    blocks: list[LayerBlock] = []
    depth = 0
    line = 1
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token == "\n":
            line += 1
        elif token in "{<":
            depth += 1
        elif token in "}>":
            depth -= 1
        elif depth == 0 and token in ("layer", "layers"):
            blocks.append(LayerBlock(token, line))
        elif token[0] in "\"'":
            line += token.count("\n")
    return blocks


# A prototxt is a description, not data: the largest published ones are a few MB. Past this, refuse unread.
MAX_PROTOTXT_BYTES = 64 << 20


def regular_file(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> int:
    """Refuse, in one line, an input that is missing, not a regular file (a directory, a named pipe, a device
    such as /dev/zero) or larger than ``max_bytes``; return its size. Nothing is opened or read."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ParseError(f"{path}: no such file") from None
    except OSError as exc:
        raise ParseError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ParseError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise ParseError(f"{path}: not a regular file (a pipe or a device?); a {what} must be a file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise ParseError(f"{path}: {info.st_size:,} bytes is too large for a {what} (at most {max_bytes:,})")
    return info.st_size


def read_text(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    size = regular_file(path, "prototxt file", MAX_PROTOTXT_BYTES)
    try:
        with open(path, "rb") as f:
            data = f.read(min(size, MAX_PROTOTXT_BYTES) + 1)  # read() would reserve its whole argument first
    except OSError as exc:
        raise ParseError(f"{path}: cannot read the prototxt file ({exc.strerror or exc})") from None
    if len(data) > MAX_PROTOTXT_BYTES:  # it grew while we looked
        raise ParseError(f"{path}: too large for a prototxt file (over {MAX_PROTOTXT_BYTES:,} bytes)")
    if b"\x00" in data[:4096]:
        raise ParseError(f"{path}: binary data where a text prototxt was expected (is it a caffemodel?)")
    try:
        # utf-8-sig: a byte order mark (as Windows editors write it) is not part of the text
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    _check_line_lengths(text, path)
    return text


# protobuf's text parser needs some 150 bytes per character of a line (measured on a long quoted name), so a
# line is bounded well below the file: published prototxts have lines of at most a few KB.
MAX_LINE_CHARS = 1 << 20


def _check_line_lengths(text: str, path: str) -> None:
    start, line = 0, 1
    while True:
        end = text.find("\n", start)
        stop = len(text) if end < 0 else end
        if stop - start > MAX_LINE_CHARS:
            raise ParseError(f"{path}:{line}: a line of {stop - start:,} characters; ninport reads lines of at most "
                             f"{MAX_LINE_CHARS:,} (is this a prototxt?)")
        if end < 0:
            return
        start, line = end + 1, line + 1


def parse_text(text: str, message: Message, path: str = "<text>", hint: bool = True) -> Message:
    """Parse protobuf text format into ``message``; errors become one line ``path:line:col: what``.

    A field or enum value the schema lacks usually comes from a Caffe fork; with ``hint`` the error says how
    to read the file with the fork's schema.
    """
    try:
        text_format.Parse(text, message, allow_unknown_extension=False)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        what = str(exc)
        # protobuf prefixes its message with "line:col : "; keep only the explanation.
        what = re.sub(r"^\d+:\d+\s*:\s*", "", what)
        where = f"{path}:{line}:{col}" if line else path
        if hint and ("has no field named" in what or "has no value named" in what):
            what += " (a field of a Caffe fork? read the file with the fork's schema: --caffe-proto PATH/caffe.proto)"
        raise ParseError(f"{where}: {what}") from None
    return message


def read_prototxt(path: str | os.PathLike, message: Message) -> tuple[Message, list[LayerBlock]]:
    """Read a prototxt file into ``message`` and return it with the positions of its layer blocks."""
    text = read_text(path)
    parse_text(text, message, os.fspath(path))
    return message, scan_layer_blocks(text)
