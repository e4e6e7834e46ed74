"""Table 5's ablation (global average pooling against a fully connected classifier) run with ``ninport train``.

Each solver is trained once per seed (``train(..., seed=N)``); the test errors are set beside Table 5's rows and
their differences from the global-average-pooling net beside the paper's. ``python -m ninport.reproduce.ablation``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from ninport.errors import NinportError
from ninport.reproduce.tables import find_row

REFERENCE = Path(__file__).resolve().parents[2] / "reference"
# The solvers of one ablation, keyed by the Table 5 row each stands for; the first is the baseline.
VARIANTS = {
    "mlpconv + Global Average Pooling": "solver.prototxt",
    "mlpconv + Fully Connected": "solver_fc.prototxt",
    "mlpconv + Fully Connected + Dropout": "solver_fc_dropout.prototxt",
}


def run_ablation(folder: str | os.PathLike, seeds: Sequence[int], output_dir: str | os.PathLike,
                 progress=lambda msg: None) -> dict:
    """Train every variant of ``folder`` (e.g. reference/nin_digits) with each seed; test error % per run."""
    from ninport.reproduce.train import train

    if not seeds:
        raise NinportError("give at least one seed")
    runs: dict[str, list[dict]] = {}
    for method, solver in VARIANTS.items():
        path = Path(folder) / solver
        if not path.is_file():
            raise NinportError(f"{path}: no such solver (an ablation folder holds {', '.join(VARIANTS.values())})")
        for seed in seeds:
            out = Path(output_dir) / f"{path.stem}_seed{seed}"
            metrics = train(path, output_dir=out, seed=seed)
            if metrics.get("test_accuracy") is None:
                raise NinportError(f"{path}: the test net reports no accuracy")
            error = 100.0 * (1.0 - metrics["test_accuracy"])
            runs.setdefault(method, []).append({"seed": seed, "test_error": error,
                                                "test_accuracy": metrics["test_accuracy"],
                                                "seconds": metrics["seconds"]})
            progress(f"{method} (seed {seed}): test error {error:.2f} %")
    return summarize(runs, str(folder))


def summarize(runs: dict[str, list[dict]], folder: str = "") -> dict:
    """Mean, median and spread of each variant, its difference from the baseline per seed (the median too: one
    run that fails to train moves the mean a long way), and Table 5's figures."""
    baseline = next(iter(VARIANTS))
    base_by_seed = {r["seed"]: r["test_error"] for r in runs[baseline]}
    rows = []
    for method, items in runs.items():
        errors = [r["test_error"] for r in items]
        deltas = [r["test_error"] - base_by_seed[r["seed"]] for r in items if r["seed"] in base_by_seed]
        paper = find_row("cifar10", method)
        paper_base = find_row("cifar10", baseline).value
        rows.append({
            "method": method, "runs": items, "mean_error": statistics.fmean(errors),
            "median_error": statistics.median(errors),
            "stdev_error": statistics.stdev(errors) if len(errors) > 1 else 0.0,
            "mean_delta": statistics.fmean(deltas) if deltas else None,
            "median_delta": statistics.median(deltas) if deltas else None,
            "deltas": deltas, "paper_error": paper.value, "paper_delta": round(paper.value - paper_base, 6),
            "paper_source": paper.source,
        })
    return {"folder": folder, "baseline": baseline, "rows": rows}


def format_summary(summary: dict) -> str:
    lines = [f"{summary['folder']}: test error % per seed; delta = variant - {summary['baseline']} (same seed)", ""]
    width = max(len(r["method"]) for r in summary["rows"])
    lines.append(f"  {'method':<{width}}  {'mean':>6} {'median':>6} {'sd':>5} {'delta':>6} {'median':>6}   "
                 f"{'Table 5 (CIFAR-10)':>18} {'delta':>6}")
    for r in summary["rows"]:
        delta = "" if r["mean_delta"] is None else f"{r['mean_delta']:+.2f}"
        median = "" if r["median_delta"] is None else f"{r['median_delta']:+.2f}"
        lines.append(f"  {r['method']:<{width}}  {r['mean_error']:6.2f} {r['median_error']:6.2f} "
                     f"{r['stdev_error']:5.2f} {delta:>6} {median:>6}   {r['paper_error']:18.2f} "
                     f"{r['paper_delta']:+6.2f}")
    lines += ["", "  per seed (seed=test error %):"]
    for r in summary["rows"]:
        lines.append(f"  {r['method']:<{width}}  " + " ".join(f"{x['seed']}={x['test_error']:.2f}" for x in r["runs"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ninport.reproduce.ablation", description=__doc__)
    parser.add_argument("folder", nargs="?", default=str(REFERENCE / "nin_digits"),
                        help="a folder with solver.prototxt, solver_fc.prototxt, solver_fc_dropout.prototxt")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds (default 1,2,3,4,5)")
    parser.add_argument("--output-dir", default="runs/ablation")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        summary = run_ablation(args.folder, seeds, args.output_dir,
                               progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (NinportError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
