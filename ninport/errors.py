"""The errors ninport raises on bad input, in one small hierarchy.

Every error carries a one-line message that names what is wrong and where (file, layer, line); the CLI prints
that line and exits non-zero, the traceback only with ``--debug``.
"""

from __future__ import annotations

# An error line quotes at most this much of what it names (a layer name, a line of the file), whole or cut.
MAX_MESSAGE = 600


class NinportError(Exception):
    """Base class: a problem with the user's input or environment, reported as one line."""

    def __str__(self) -> str:
        text = super().__str__()
        if len(text) > MAX_MESSAGE:
            # Keep the start (file, line, layer) and the end (what is wrong) of an over-long line.
            text = f"{text[:MAX_MESSAGE * 2 // 3]} ...[{len(text):,} chars cut]... {text[-MAX_MESSAGE // 4:]}"
        return text.replace("\n", " ")


class ParseError(NinportError):
    """A prototxt, caffemodel or binaryproto that cannot be read."""


class NetError(NinportError):
    """A net that reads but does not make sense: a missing bottom, a duplicate name, a bad phase."""


class UnsupportedLayerError(NinportError):
    """One or more layer types ninport cannot convert; every such layer is listed at once."""

    def __init__(self, layers: list[tuple[str, str, str]]):
        # layers: (name, type, where) triples
        self.layers = layers
        types = sorted({t for _, t, _ in layers})
        listing = "; ".join(f"{name!r} ({typ}, {where})" for name, typ, where in layers)
        super().__init__(f"unsupported layer type(s) {', '.join(types)}: {listing}")


class ShapeError(NinportError):
    """Shapes that do not fit: Caffe's shape rules or the weights disagree with the net."""


class WeightsError(ShapeError):
    """Weights missing, extra, or of the wrong shape for the net they are loaded into."""


class OutputError(NinportError):
    """An output path that cannot be written, or that would overwrite an input."""


class ParityError(NinportError):
    """Two backends that should compute the same numbers do not."""


class RuntimeUnavailableError(NinportError):
    """A runtime, execution provider or optional extra that is not installed or has no device here."""
