"""Table 5's ablation: the fully connected variants of the CIFAR-10 and digits NiNs, and the seeded comparison.

The variants are checked against the global-average-pooling nets they come from (same layers up to the last
mlpconv, then a fully connected classifier), trained for a few iterations, and the comparison's arithmetic is
checked against Table 5's figures typed here from the paper (arXiv 1312.4400v3, p. 7).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ninport.caffe.load import read_net
from ninport.caffe.shapes import infer_shapes
from ninport.reproduce import ablation
from ninport.reproduce.solver import read_solver
from ninport.reproduce.train import train
from tests.test_train import weights_of, write_cifar

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"digits": REPO / "reference" / "nin_digits", "cifar10": REPO / "reference" / "nin_cifar10"}
VARIANTS = ("fc", "fc_dropout")


def described(layer) -> tuple:
    """A layer as Caffe's text has it (blob names as written; ninport renames in-place tops internally)."""
    param = type(layer.param)()
    param.CopyFrom(layer.param)
    param.ClearField("bottom")
    param.ClearField("top")
    return layer.name, layer.type, layer.caffe_bottoms, layer.caffe_tops, str(param)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("which", FOLDERS)
def test_fc_variant_is_the_gap_net_with_a_fully_connected_classifier(which: str, variant: str) -> None:
    folder = FOLDERS[which]
    gap = read_net(folder / "train_val.prototxt", phase="TRAIN", deploy=False)
    fc = read_net(folder / f"train_val_{variant}.prototxt", phase="TRAIN", deploy=False)
    names = [layer.name for layer in gap.layers]
    cut = names.index("pool3")
    assert [described(layer) for layer in fc.layers[:cut]] == [described(layer) for layer in gap.layers[:cut]]
    tail = [(layer.name, layer.type) for layer in fc.layers[cut:]]
    head = [("drop_fc", "Dropout")] if variant == "fc_dropout" else []
    assert tail == head + [("fc", "InnerProduct"), ("loss", "SoftmaxWithLoss")]
    ip = next(layer for layer in fc.layers if layer.name == "fc")
    assert ip.param.inner_product_param.num_output == 10 and ip.caffe_bottoms == ["cccp6"]
    assert [layer.bottoms[0] for layer in fc.layers if layer.type == "SoftmaxWithLoss"] == ["fc"]
    if variant == "fc_dropout":
        drop = next(layer for layer in fc.layers if layer.name == "drop_fc")
        ratios = {layer.param.dropout_param.dropout_ratio for layer in gap.layers if layer.type == "Dropout"}
        assert {drop.param.dropout_param.dropout_ratio} == ratios  # the net's own dropout ratio
    # The deploy view (its shape from the Data layer's named data set): the classifier sees the last maps whole.
    shapes = infer_shapes(read_net(folder / f"train_val_{variant}.prototxt"))
    side = 8 if which == "cifar10" else 2
    assert shapes.blobs["cccp6"][1:] == (10, side, side) and shapes.blobs["fc"][1:] == (10,)
    assert shapes.layers["fc"].params == [(10, 10 * side * side), (10,)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("which", FOLDERS)
def test_fc_solver_is_the_gap_solver_but_net_and_prefix(which: str, variant: str) -> None:
    base = read_solver(str(FOLDERS[which] / "solver.prototxt"))
    other = read_solver(str(FOLDERS[which] / f"solver_{variant}.prototxt"))
    assert other.net == f"train_val_{variant}.prototxt" and other.snapshot_prefix == f"{base.snapshot_prefix}_{variant}"
    other.net, other.snapshot_prefix = base.net, base.snapshot_prefix
    assert other == base


def short_copy(folder: Path, dest: Path, **fields) -> Path:
    """The folder's nets and solvers with the solver fields replaced (a few iterations instead of the schedule)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.prototxt"):
        text = path.read_text()
        if path.name.startswith("solver"):
            for key, value in fields.items():
                text, n = re.subn(rf"^{key}: .*$", f"{key}: {value}", text, flags=re.M)
                if not n:
                    text += f"{key}: {value}\n"
        (dest / path.name).write_text(text)
    return dest


def test_digits_fc_variants_train_and_seed_option_decides_the_run(tmp_path: Path) -> None:
    short = short_copy(FOLDERS["digits"], tmp_path / "d", max_iter=12, test_interval=12, test_iter=3, snapshot=0,
                       stepsize=100)
    runs = {}
    for variant, seed in (("fc", 7), ("fc", 7), ("fc", 8), ("fc_dropout", 7)):
        out = tmp_path / f"{variant}_{seed}_{len(runs)}"
        metrics = train(short / f"solver_{variant}.prototxt", output_dir=out, seed=seed)
        assert metrics["iterations"] == 12 and metrics["seed"] == seed and metrics["seed_from_option"]
        assert np.isfinite(metrics["train_loss"]) and metrics["test_accuracy"] is not None
        runs[len(runs)] = weights_of(metrics["snapshot"])
    first, same, other, dropout = runs.values()
    assert first.keys() == other.keys() and "fc" in first and "pool3" not in first
    assert [a.shape for a in first["fc"]] == [(10, 40), (10,)]
    for name in first:
        for a, b in zip(first[name], same[name]):
            np.testing.assert_array_equal(a, b)  # the same seed: the same run
    assert float(np.abs(first["fc"][0] - other["fc"][0]).max()) > 1e-3  # another seed: other fillers
    assert dropout.keys() == first.keys()  # dropout adds no blobs


@pytest.mark.parametrize("variant", VARIANTS)
def test_cifar10_fc_variant_trains_an_iteration(tmp_path: Path, variant: str) -> None:
    data = tmp_path / "cifar-10-batches-py"
    write_cifar(data)
    text = (FOLDERS["cifar10"] / f"train_val_{variant}.prototxt").read_text()
    text = text.replace("cifar10:cifar-10-batches-py?preprocess=gcn_zca", f"cifar10:{data}")
    (tmp_path / f"train_val_{variant}.prototxt").write_text(re.sub(r"batch_size: \d+", "batch_size: 2", text))
    solver = (FOLDERS["cifar10"] / f"solver_{variant}.prototxt").read_text()
    for key, value in (("max_iter", 1), ("test_iter", 1), ("test_interval", 1), ("snapshot", 0)):
        solver = re.sub(rf"^{key}: \d+.*$", f"{key}: {value}", solver, flags=re.M)
    (tmp_path / f"solver_{variant}.prototxt").write_text(solver)
    metrics = train(tmp_path / f"solver_{variant}.prototxt", output_dir=tmp_path / "out", device="cpu", seed=0)
    assert metrics["iterations"] == 1 and np.isfinite(metrics["train_loss"])
    assert [a.shape for a in weights_of(metrics["snapshot"])["fc"]] == [(10, 640), (10,)]


def test_summary_sets_per_seed_deltas_beside_table_5() -> None:
    runs = {
        "mlpconv + Global Average Pooling": [{"seed": 1, "test_error": 1.0}, {"seed": 2, "test_error": 2.0},
                                             {"seed": 3, "test_error": 1.0}],
        "mlpconv + Fully Connected": [{"seed": 2, "test_error": 2.5}, {"seed": 1, "test_error": 3.0},
                                      {"seed": 3, "test_error": 51.0}],  # seed 3: a run that did not train
        "mlpconv + Fully Connected + Dropout": [{"seed": 1, "test_error": 1.5}, {"seed": 2, "test_error": 1.5},
                                                {"seed": 3, "test_error": 1.0}],
    }
    summary = ablation.summarize(runs, "x")
    rows = {r["method"]: r for r in summary["rows"]}
    fc = rows["mlpconv + Fully Connected"]
    assert fc["deltas"] == [0.5, 2.0, 50.0]  # paired by seed, not by order
    assert fc["mean_delta"] == pytest.approx(17.5) and fc["median_delta"] == pytest.approx(2.0)
    assert fc["mean_error"] == pytest.approx(56.5 / 3) and fc["median_error"] == pytest.approx(3.0)
    assert fc["stdev_error"] == pytest.approx(np.std([2.5, 3.0, 51.0], ddof=1))
    dropout = rows["mlpconv + Fully Connected + Dropout"]
    assert dropout["mean_delta"] == pytest.approx(0.0) and dropout["median_delta"] == pytest.approx(0.0)
    # Table 5: 11.59 and 10.88 against 10.41.
    assert fc["paper_error"] == 11.59 and fc["paper_delta"] == pytest.approx(1.18)
    assert dropout["paper_delta"] == pytest.approx(0.47)
    text = ablation.format_summary(summary)
    assert "+17.50" in text and "+2.00" in text and "+1.18" in text and "+0.47" in text and "3=51.00" in text


def test_ablation_entry_point_trains_every_variant_per_seed(tmp_path: Path, capsys) -> None:
    short = short_copy(FOLDERS["digits"], tmp_path / "d", max_iter=3, test_interval=3, test_iter=1, snapshot=0)
    assert ablation.main([str(short), "--seeds", "1,2", "--output-dir", str(tmp_path / "runs"), "--json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in summary["rows"]] == list(ablation.VARIANTS)
    for row in summary["rows"]:
        assert [r["seed"] for r in row["runs"]] == [1, 2]
        assert all(0.0 <= r["test_error"] <= 100.0 for r in row["runs"])
    assert len(list((tmp_path / "runs").iterdir())) == 6
    assert ablation.main([str(tmp_path / "nowhere"), "--seeds", "1"]) == 1
    assert "no such solver" in capsys.readouterr().err
