"""python -m ssm_lra.tables: our runs (mean ± std over seeds) beside the published numbers.

Two real smoke runs (one multirun through the CLI, shared by the module) give the S4D-Inv row;
copies of one of them with edited configs and summaries exercise the row mapping and errors.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trained_run import shared_multirun
import yaml

from ssm_lra import tables
from ssm_lra.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = yaml.safe_load((REPO / "results" / "published.yaml").read_text())


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Two S4D smoke runs (seeds 0 and 1) in one multirun folder (shared with test_train_cli)."""
    return shared_multirun(tmp_path_factory)


def summaries(folder):
    return [json.loads(p.read_text()) for p in sorted(Path(folder).rglob("summary.json"))]


def table_rows(markdown):
    """{first cell: [cells]} of the table's body rows."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| model"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def header(markdown):
    return [c.strip() for c in markdown.splitlines()[0].strip("|").split("|")]


def cell(markdown, row, column, offset=0):
    """The cell of `row` under the task title `column` (offset 1: its pub. column, 2: its Δ)."""
    return table_rows(markdown)[row][header(markdown).index(column) + offset]


@pytest.mark.slow
def test_table_of_a_multirun_folder(sweep_dir, tmp_path, capsys):
    runs = summaries(sweep_dir)
    assert len(runs) == 2 and {r["model"] for r in runs} == {"s4d"} and {r["seed"] for r in runs} == {0, 1}
    out = tmp_path / "table.md"
    assert tables.main([str(sweep_dir), "--out", str(out)]) == 0
    assert "Wrote" in capsys.readouterr().out
    markdown = out.read_text()
    values = [100 * r["test_accuracy"] for r in runs]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    # s4d with the default init (inv) is compared with the S4D-Inv row.
    assert cell(markdown, "S4D-Inv", "ListOps") == f"{mean:.2f} ± {std:.2f} (2)"
    published = PUBLISHED["results"]["S4D-Inv"]["accuracy"]["listops"]
    assert cell(markdown, "S4D-Inv", "ListOps", 1) == f"{published:.2f}*"  # unverified in the reference
    assert cell(markdown, "S4D-Inv", "ListOps", 2) == f"{mean - published:+.2f}"
    # Tasks without runs: our cell and the difference are dashes, the published number stays.
    assert cell(markdown, "S4D-Inv", "Path-X") == tables.DASH
    assert cell(markdown, "S4D-Inv", "Path-X", 1) == f"{PUBLISHED['results']['S4D-Inv']['accuracy']['pathx']:.2f}*"
    assert cell(markdown, "S4D-Inv", "Path-X", 2) == tables.DASH
    assert cell(markdown, "S4D-Inv", "Avg") == tables.DASH  # not every task has runs
    assert set(table_rows(markdown)) == {"S4D-Inv"}
    # One run directory given directly works too; a single run has no spread.
    single = min(sweep_dir.rglob("summary.json")).parent
    one = tables.make_table([single])[0]
    value = 100 * json.loads((single / "summary.json").read_text())["test_accuracy"]
    assert cell(one, "S4D-Inv", "ListOps") == f"{value:.2f} (1)"


def copy_run(source: Path, target: Path, ssm_init=None, accuracy=None, model=None, task=None, seed=None):
    """A copy of a real run directory with its config and summary edited."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    config_path = target / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    if ssm_init is not None:
        config["model"]["mixer"]["ssm_init"] = ssm_init
    config_path.write_text(yaml.safe_dump(config))
    summary = json.loads((target / "summary.json").read_text())
    for key, value in (("test_accuracy", accuracy), ("model", model), ("task", task), ("seed", seed)):
        if value is not None:
            summary[key] = value
    (target / "summary.json").write_text(json.dumps(summary))
    return target


@pytest.mark.slow
def test_rows_follow_model_and_ssm_init(sweep_dir, tmp_path):
    source = min(sweep_dir.rglob("summary.json")).parent
    copy_run(source, tmp_path / "legs0", ssm_init="legs", accuracy=0.5, seed=0)
    copy_run(source, tmp_path / "legs1", ssm_init="legs", accuracy=0.6, seed=1)
    copy_run(source, tmp_path / "s5", model="s5", accuracy=0.7, task="pathx")
    copy_run(source, tmp_path / "ours", model="mymodel", accuracy=0.4)
    (tmp_path / "unfinished").mkdir()  # no summary.json: not a run, skipped
    markdown, warnings = tables.make_table([tmp_path])
    rows = table_rows(markdown)
    assert set(rows) == {"S4D-LegS", "S5", "mymodel (no published row)"}
    assert cell(markdown, "S4D-LegS", "ListOps") == f"55.00 ± {statistics.stdev([50.0, 60.0]):.2f} (2)"
    assert cell(markdown, "S5", "Path-X") == "70.00 (1)"
    s5_pathx = PUBLISHED["results"]["S5"]["accuracy"]["pathx"]
    assert cell(markdown, "S5", "Path-X", 1) == f"{s5_pathx:.2f}"  # verified: no asterisk
    assert cell(markdown, "S5", "Path-X", 2) == f"{70.0 - s5_pathx:+.2f}"
    assert cell(markdown, "mymodel (no published row)", "ListOps", 1) == tables.DASH
    assert warnings == []
    # The same seed twice in one cell is reported.
    copy_run(source, tmp_path / "legs1_again", ssm_init="legs", accuracy=0.6, seed=1)
    assert any("seed(s) [1]" in w for w in tables.make_table([tmp_path])[1])


def run(source_summary: dict, folder: Path, **summary):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({**source_summary, **summary}))
    return folder


def test_average_only_when_every_task_has_runs(tmp_path):
    accuracies = dict(zip(PUBLISHED["tasks"], [0.6, 0.85, 0.9, 0.88, 0.95, 0.97]))
    for task, acc in accuracies.items():
        run({"model": "s5", "seed": 0}, tmp_path / task, task=task, test_accuracy=acc)
    markdown, _ = tables.make_table([tmp_path])
    ours = statistics.fmean(100 * a for a in accuracies.values())
    assert cell(markdown, "S5", "Avg") == f"{ours:.2f}"
    assert cell(markdown, "S5", "Avg", 2) == f"{ours - PUBLISHED['results']['S5']['average']:+.2f}"


def test_failed_published_cell_is_shown_as_fail(tmp_path):
    # No saved config: the s4d run goes to the default S4D row (S4D-Inv), so use a run whose
    # config names lin to reach the row whose Path-X is "fail".
    folder = run({"model": "s4d", "seed": 0}, tmp_path / "lin", task="pathx", test_accuracy=0.5)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"mixer": {"ssm_init": "lin"}}}))
    markdown, _ = tables.make_table([tmp_path])
    assert cell(markdown, "S4D-Lin", "Path-X", 1) == "fail" and cell(markdown, "S4D-Lin", "Path-X", 2) == tables.DASH


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: None, "no runs found"),
        (lambda d: (d / "r").mkdir() or (d / "r" / "summary.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: (d / "r").mkdir() or (d / "r" / "summary.json").write_text('{"model": "s4d"}'), "lacks ['task', 'test_accuracy']"),
        (lambda d: (d / "r").mkdir() or (d / "r" / "summary.json").write_text(
            '{"model": "s4d", "task": "listops", "test_accuracy": 87.5}'), "must be a number in [0, 1]"),
    ],
    ids=["empty", "bad-json", "missing-keys", "percent-not-fraction"],
)
def test_bad_input_is_one_clear_error(setup, message, tmp_path, capsys):
    setup(tmp_path)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tables.make_table([tmp_path])
    assert tables.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_missing_paths_and_published_file(tmp_path, capsys):
    assert tables.main([str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    run({"model": "s5", "seed": 0, "task": "listops"}, tmp_path / "r", test_accuracy=0.5)
    assert tables.main([str(tmp_path), "--published", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the published results" in capsys.readouterr().err


def test_command_line_entry_point(tmp_path):
    """`python -m ssm_lra.tables` and scripts/make_tables.py print the same table."""
    run({"model": "s5", "seed": 0, "task": "image"}, tmp_path / "r", test_accuracy=0.8)
    outputs = []
    for cmd in ([sys.executable, "-m", "ssm_lra.tables", str(tmp_path)], [sys.executable, str(REPO / "scripts" / "make_tables.py"), str(tmp_path)]):
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] and "| S5 |" in outputs[0] and "80.00 (1)" in outputs[0]
