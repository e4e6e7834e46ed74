"""Every runtime a converted model runs on, behind one small interface: load a model, run named feeds to named
outputs (extra outputs for per-blob checks), say which provider actually runs it and which version it is.

Each runtime lives in its own module and imports its library only when loaded, so importing this package is cheap.
"""

from __future__ import annotations

from ninport.runtimes.base import (
    KINDS,
    PRECISIONS,
    PROVIDERS,
    Runtime,
    availability,
    load,
)

__all__ = ["KINDS", "PRECISIONS", "PROVIDERS", "Runtime", "availability", "load"]
