"""The paper's tables as data, and the comparison of a reproduced figure with one of their rows.

The rows live in ``reference/paper/nin_tables.json`` (with their sources; see ``reference/paper/SOURCE.md``).
Nothing here imports torch or numpy: ``ninport paper`` and ``ninport validate`` answer at once.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ninport.errors import NinportError

TABLES_ENV = "NINPORT_TABLES"  # another tables file, e.g. for a wheel install without the repo's reference/
DEFAULT_TABLES = Path(__file__).resolve().parents[2] / "reference" / "paper" / "nin_tables.json"
DATASETS = ("cifar10", "cifar100", "svhn", "mnist", "imagenet")
ROW_KEYS = ("paper", "table", "dataset", "method", "metric", "value", "source")
# Metrics and which way is better; the delta is always reproduced - paper, in the metric's own unit.
LOWER_IS_BETTER = {"test error %": True, "top-1 accuracy %": False, "top-5 accuracy %": False}
DEFAULT_TOLERANCE = 0.5  # percentage points


@dataclass(frozen=True)
class Row:
    """One row of one table: what the paper reports for a method on a data set."""

    paper: str
    table: str
    dataset: str
    method: str
    metric: str
    value: float
    source: str
    confirmed: bool = False
    confirmed_by: tuple[str, ...] = field(default_factory=tuple)
    kind: str = "table"  # "table": a table's row; "text": stated in the running text; "gist": the ImageNet gist
    page: str | None = None  # the page of the PDF version the source names (arXiv v3), when recorded

    def as_dict(self) -> dict:
        """The row as ``ninport paper --json`` prints it: the seven keys, its kind and page, and how it was
        confirmed (``confirmed``, ``confirmed_by``)."""
        out = {k: getattr(self, k) for k in ROW_KEYS}
        out.update(kind=self.kind, page=self.page, confirmed=self.confirmed, confirmed_by=list(self.confirmed_by))
        return out

    @property
    def lower_is_better(self) -> bool:
        return LOWER_IS_BETTER.get(self.metric, True)


@dataclass(frozen=True)
class Comparison:
    """A reproduced figure against one row: delta = reproduced - paper, in the row's metric."""

    row: Row
    reproduced: float
    tolerance: float

    @property
    def delta(self) -> float:
        return round(self.reproduced - self.row.value, 6)

    @property
    def within(self) -> bool:
        return abs(self.delta) <= self.tolerance + 1e-9

    @property
    def verdict(self) -> str:
        if self.within:
            return "reproduced"
        better = (self.delta < 0) == self.row.lower_is_better
        return "better than the paper" if better else "worse than the paper"

    def as_dict(self) -> dict:
        return {**self.row.as_dict(), "reproduced": self.reproduced, "delta": self.delta,
                "tolerance": self.tolerance, "within_tolerance": self.within, "verdict": self.verdict}

    def describe(self) -> str:
        unit = "pp" if self.row.metric.endswith("%") else ""
        sign = "+" if self.delta >= 0 else ""
        return (f"{self.row.dataset} / {self.row.method} ({self.row.table}): paper {self.row.value:g}, "
                f"reproduced {self.reproduced:g} {self.row.metric}, delta {sign}{self.delta:.2f} {unit}".rstrip()
                + f" -> {self.verdict} (tolerance {self.tolerance:g}{' ' + unit if unit else ''})")


def tables_path() -> Path:
    return Path(os.environ.get(TABLES_ENV) or DEFAULT_TABLES)


def load_rows(path: str | os.PathLike | None = None) -> list[Row]:
    """Every row of the tables file, in its order."""
    path = Path(path) if path is not None else tables_path()
    if not path.exists():
        raise NinportError(f"{path}: the paper's tables file is missing (set {TABLES_ENV} to its location)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["rows"] if isinstance(doc, dict) else doc
        rows = []
        for entry in entries:
            missing = [k for k in ROW_KEYS if k not in entry]
            if missing:
                raise NinportError(f"{path}: a row lacks {', '.join(missing)}: {entry}")
            rows.append(Row(
                paper=str(entry["paper"]), table=str(entry["table"]), dataset=str(entry["dataset"]),
                method=str(entry["method"]), metric=str(entry["metric"]), value=float(entry["value"]),
                source=str(entry["source"]), confirmed=bool(entry.get("confirmed", False)),
                confirmed_by=tuple(entry.get("confirmed_by", ())), kind=str(entry.get("kind", "table")),
                page=None if entry.get("page") is None else str(entry["page"])))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise NinportError(f"{path}: not a valid tables file ({type(exc).__name__}: {exc})") from None
    return rows


def normalize_dataset(name: str) -> str:
    """``CIFAR-10``, ``cifar_10``, ``Cifar10`` -> ``cifar10``; an unknown name lists the valid ones."""
    key = re.sub(r"[\s_\-.]", "", name.lower())
    key = {"ilsvrc": "imagenet", "ilsvrc2012": "imagenet"}.get(key, key)
    if key not in DATASETS:
        raise NinportError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return key


def normalize_method(name: str) -> str:
    """Case, spaces, '+', '.', '-' and '_' do not matter: 'nin+dropout' is 'NIN + Dropout'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def rows_for(dataset: str | None = None, rows: list[Row] | None = None) -> list[Row]:
    rows = load_rows() if rows is None else rows
    if dataset is None:
        return rows
    key = normalize_dataset(dataset)
    return [r for r in rows if r.dataset == key]


def find_row(dataset: str, method: str, rows: list[Row] | None = None) -> Row:
    """The row of ``method`` on ``dataset``: an exact match after normalizing, else a unique prefix."""
    candidates = rows_for(dataset, rows)
    key = normalize_method(method)
    exact = [r for r in candidates if normalize_method(r.method) == key]
    if len(exact) == 1:
        return exact[0]
    prefixed = [r for r in candidates if key and normalize_method(r.method).startswith(key)]
    if len(prefixed) == 1:
        return prefixed[0]
    valid = "; ".join(repr(r.method) for r in candidates)
    what = "is ambiguous" if len(prefixed) > 1 else "is not a row"
    raise NinportError(f"method {method!r} {what} for {normalize_dataset(dataset)}; valid: {valid}")


def compare(dataset: str, method: str, value: float, tolerance: float = DEFAULT_TOLERANCE,
            rows: list[Row] | None = None) -> Comparison:
    """Compare a reproduced ``value`` (in the row's metric, e.g. test error in %) with the paper's row."""
    if tolerance < 0:
        raise NinportError(f"--tolerance must not be negative, got {tolerance:g}")
    if value != value or value in (float("inf"), float("-inf")):  # NaN or infinite
        raise NinportError(f"--value must be a finite number, got {value}")
    return Comparison(row=find_row(dataset, method, rows), reproduced=float(value), tolerance=float(tolerance))


OWN_PREFIXES = ("nin", "mlpconv")  # the paper's own models: NIN, and Table 5's mlpconv variants


def format_rows(rows: list[Row]) -> str:
    """The rows as text, one block per table (or per section of running text), NIN's own rows marked '*'."""
    if not rows:
        return "(no rows)"
    lines: list[str] = []
    width = max(len(r.method) for r in rows)
    current = None
    for r in rows:
        head = (r.table, r.dataset, r.metric)
        if head != current:
            if current is not None:
                lines.append("")
            where = f", p. {r.page}" if r.page else ""
            marker = f"   [running text, not a table{where}]" if r.kind == "text" else ""
            lines.append(f"{r.table} - {r.dataset} - {r.metric}   ({r.paper}){marker}")
            current = head
        own = "*" if normalize_method(r.method).startswith(OWN_PREFIXES) else " "
        check = "" if r.confirmed else "   (unconfirmed)"
        lines.append(f"  {own} {r.method:<{width}}  {r.value:6.2f}{check}")
    lines.append("")
    lines.append("* = Network In Network (Table 5: its mlpconv layers with either classifier). Figures checked against "
                 "the arXiv v3 PDF; sources: reference/paper/SOURCE.md")
    return "\n".join(lines)
