"""``ninport paper`` / ``ninport validate`` and the tables file behind them.

The expected figures below are typed from issue 6's list and, for Table 5 and the running text, from
../shared/inputs/nin_paper/FIGURES.md (read from the arXiv v3 PDF), so a slip in nin_tables.json shows up here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ninport.errors import NinportError
from ninport.reproduce import tables

EXPECTED = {
    "cifar10": {
        "Stochastic Pooling": 15.13, "CNN + Spearmint": 14.98, "Conv. maxout + Dropout": 11.68,
        "NIN + Dropout": 10.41, "CNN + Spearmint + Data Augmentation": 9.50,
        "Conv. maxout + Dropout + Data Augmentation": 9.38, "DropConnect + 12 networks + Data Augmentation": 9.32,
        "NIN + Dropout + Data Augmentation": 8.81,
    },
    "cifar100": {
        "Learned Pooling": 43.71, "Stochastic Pooling": 42.51, "Conv. maxout + Dropout": 38.57,
        "Tree based priors": 36.85, "NIN + Dropout": 35.68,
    },
    "svhn": {
        "Stochastic Pooling": 2.80, "Rectifier + Dropout": 2.78, "Rectifier + Dropout + Synthetic Translation": 2.68,
        "Conv. maxout + Dropout": 2.47, "NIN + Dropout": 2.35, "Multi-digit Number Recognition": 2.16,
        "DropConnect": 1.94,
    },
    "mnist": {
        "2-Layer CNN + 2-Layer NN": 0.53, "Stochastic Pooling": 0.47, "NIN + Dropout": 0.47,
        "Conv. maxout + Dropout": 0.45,
    },
}
TABLE_OF = {"cifar10": "Table 1", "cifar100": "Table 2", "svhn": "Table 3", "mnist": "Table 4"}
# (table, method) -> (value, kind, page) for Table 5 and the figures of the running text (all CIFAR-10)
EXTRA = {
    ("Table 5", "mlpconv + Fully Connected"): (11.59, "table", "7"),
    ("Table 5", "mlpconv + Fully Connected + Dropout"): (10.88, "table", "7"),
    ("Table 5", "mlpconv + Global Average Pooling"): (10.41, "table", "7"),
    ("§4.2 (text)", "NIN without Dropout"): (14.51, "text", None),
    ("§4.6 (text)", "CNN + Fully Connected"): (17.56, "text", "7-8"),
    ("§4.6 (text)", "CNN + Dropout + Fully Connected"): (15.99, "text", "7-8"),
    ("§4.6 (text)", "CNN + Global Average Pooling"): (16.46, "text", "7-8"),
}


def test_tables_file_holds_every_figure_with_its_source():
    rows = tables.load_rows()
    got = {(r.dataset, r.method): r for r in rows if r.table.startswith(("Table 1", "Table 2", "Table 3", "Table 4",
                                                                           "gist"))}
    assert len(rows) == sum(len(v) for v in EXPECTED.values()) + len(EXTRA) + 1
    extra = {(r.table, r.method): r for r in rows if (r.table, r.method) in EXTRA}
    assert set(extra) == set(EXTRA)
    for key, (value, kind, page) in EXTRA.items():
        row = extra[key]
        assert (row.value, row.kind, row.page, row.dataset) == (pytest.approx(value), kind, page, "cifar10")
        assert "1312.4400v3" in row.source and key[0].split()[0] in row.source  # 'Table 5' or '§4.x'
        assert row.confirmed and any("1312.4400v3 PDF" in c for c in row.confirmed_by)
    for dataset, methods in EXPECTED.items():
        for method, value in methods.items():
            row = got[(dataset, method)]
            assert row.value == pytest.approx(value, abs=1e-9)
            assert row.table == TABLE_OF[dataset]
            assert row.metric == "test error %"
            assert "1312.4400" in row.paper and TABLE_OF[dataset] in row.source and method in row.source
            assert row.confirmed and row.confirmed_by  # every row says what it was checked against
    imagenet = [r for r in rows if r.dataset == "imagenet"]
    assert len(imagenet) == 1
    assert imagenet[0].value == pytest.approx(59.36) and imagenet[0].metric == "top-1 accuracy %"
    assert "d802a5849de39225bcc6" in imagenet[0].source


def test_paper_json_rows_have_exactly_the_documented_keys(run_cli):
    result = run_cli("paper", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 32
    for row in rows:
        assert set(row) == {"paper", "table", "dataset", "method", "metric", "value", "source", "kind", "page",
                            "confirmed", "confirmed_by"}
        assert row["source"] and row["confirmed_by"]
    assert {r["dataset"] for r in rows} == {"cifar10", "cifar100", "svhn", "mnist", "imagenet"}
    assert {r["kind"] for r in rows} == {"table", "text", "gist"}
    table5 = [r for r in rows if r["table"] == "Table 5"]
    assert [(r["method"], r["value"]) for r in table5] == [
        ("mlpconv + Fully Connected", 11.59), ("mlpconv + Fully Connected + Dropout", 10.88),
        ("mlpconv + Global Average Pooling", 10.41)]
    assert all("p. 7" in r["source"] and r["page"] == "7" for r in table5)


def test_paper_prints_table5_as_its_own_table_and_marks_text_figures(run_cli):
    text = run_cli("paper", "--dataset", "cifar10").stdout
    blocks = {b.splitlines()[0].split(" - ")[0]: b for b in text.split("\n\n")}
    assert "11.59" in blocks["Table 5"] and "10.88" in blocks["Table 5"] and "11.59" not in blocks["Table 1"]
    assert "running text, not a table" in blocks["§4.6 (text)"] and "17.56" in blocks["§4.6 (text)"]
    assert "running text, not a table" in blocks["§4.2 (text)"] and "14.51" in blocks["§4.2 (text)"]
    assert "running text" not in blocks["Table 5"].splitlines()[0]


@pytest.mark.parametrize("row", tables.load_rows(), ids=lambda r: f"{r.dataset}-{r.table}-{r.method}")
def test_validate_accepts_every_row(run_cli, row):
    ok = run_cli("validate", "--dataset", row.dataset, "--method", row.method, "--value", f"{row.value + 0.2:g}",
                 "--json")
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.stdout)
    assert (out["table"], out["method"], out["delta"]) == (row.table, row.method, pytest.approx(0.2))
    off = run_cli("validate", "--dataset", row.dataset, "--method", row.method, "--value", f"{row.value + 0.6:g}")
    assert off.exit_code == 1


def test_paper_dataset_filter_and_text(run_cli):
    result = run_cli("paper", "--dataset", "CIFAR-100", "--json")
    rows = json.loads(result.stdout)
    assert [r["method"] for r in rows] == list(EXPECTED["cifar100"])
    text = run_cli("paper", "--dataset", "svhn")
    assert text.exit_code == 0
    assert "Table 3" in text.stdout and "2.35" in text.stdout and "Table 1" not in text.stdout


def test_validate_accepts_10_6_and_rejects_12_0_for_nin_dropout(run_cli):
    ok = run_cli("validate", "--dataset", "cifar10", "--method", "NIN + Dropout", "--value", "10.6")
    assert ok.exit_code == 0, ok.output
    assert "+0.19" in ok.stdout and "reproduced" in ok.stdout
    bad = run_cli("validate", "--dataset", "cifar10", "--method", "NIN + Dropout", "--value", "12.0")
    assert bad.exit_code == 1
    assert "+1.59" in bad.stdout and "worse than the paper" in bad.stdout


def test_validate_json_delta_and_tolerance(run_cli):
    result = run_cli("validate", "--dataset", "svhn", "--method", "nin+dropout", "--value", "2.0", "--tolerance",
                     "0.4", "--json")
    out = json.loads(result.stdout)
    assert result.exit_code == 0
    assert out["delta"] == pytest.approx(2.0 - 2.35) and out["within_tolerance"] is True
    tight = run_cli("validate", "--dataset", "svhn", "--method", "nin+dropout", "--value", "2.0", "--tolerance",
                    "0.3", "--json")
    assert tight.exit_code == 1 and json.loads(tight.stdout)["verdict"] == "better than the paper"


def test_validate_accuracy_metric_direction(run_cli):
    # ImageNet's row is an accuracy: a higher figure is better, a lower one worse.
    high = run_cli("validate", "--dataset", "imagenet", "--method", "nin", "--value", "61", "--json")
    low = run_cli("validate", "--dataset", "imagenet", "--method", "nin", "--value", "57", "--json")
    assert high.exit_code == 1 and json.loads(high.stdout)["verdict"] == "better than the paper"
    assert low.exit_code == 1 and json.loads(low.stdout)["verdict"] == "worse than the paper"


@pytest.mark.parametrize("spelling", ["NIN + Dropout", "nin+dropout", "  nin   DROPOUT ", "NIN+Dropout", "nin_dropout"])
def test_method_matching_is_forgiving(spelling):
    assert tables.find_row("cifar10", spelling).value == pytest.approx(10.41)


def test_method_prefix_when_unique_and_ambiguity_listed():
    assert tables.find_row("cifar10", "nin dropout data aug").value == pytest.approx(8.81)
    assert tables.find_row("cifar10", "conv maxout dropout").value == pytest.approx(11.68)
    with pytest.raises(NinportError, match="ambiguous.*'NIN \\+ Dropout'.*'NIN \\+ Dropout \\+ Data Augmentation'"):
        tables.find_row("cifar10", "nin")


def test_unknown_method_lists_valid_ones_in_one_line(run_cli):
    result = run_cli("validate", "--dataset", "mnist", "--method", "resnet", "--value", "0.5")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    for method in EXPECTED["mnist"]:
        assert repr(method) in lines[0]


def test_unknown_dataset_lists_valid_ones(run_cli):
    result = run_cli("validate", "--dataset", "digits", "--method", "NIN + Dropout", "--value", "1")
    assert result.exit_code == 2
    assert "cifar10, cifar100, svhn, mnist, imagenet" in result.stderr
    listing = run_cli("paper", "--dataset", "imagenet2")
    assert listing.exit_code == 1 and "valid: cifar10" in listing.stderr


def test_negative_tolerance_is_refused(run_cli):
    result = run_cli("validate", "--dataset", "cifar10", "--method", "NIN + Dropout", "--value", "10.41",
                     "--tolerance", "-1")
    assert result.exit_code == 2 and "tolerance" in result.stderr


def test_broken_tables_file_is_one_clear_error(tmp_path, monkeypatch, run_cli):
    bad = tmp_path / "t.json"
    bad.write_text('{"rows": [{"paper": "x"}]}')
    monkeypatch.setenv(tables.TABLES_ENV, str(bad))
    result = run_cli("paper")
    assert result.exit_code == 1 and "lacks" in result.stderr and str(bad) in result.stderr


def test_paper_and_validate_do_not_import_torch():
    # A fresh interpreter: this test process has torch loaded already by other tests.
    code = (
        "import sys\n"
        "from ninport.cli import main\n"
        "for args in (['paper', '--json'], ['validate', '--dataset', 'cifar10', '--method', 'NIN + Dropout',"
        " '--value', '10.6']):\n"
        "    try:\n"
        "        main(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    assert "10.41" in out.stdout  # the commands did run
