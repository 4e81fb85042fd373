"""Damaged run directories: status.json and metrics.json as a crash, a full disk or a hand edit leave them.
`--status`, `--rerun`, the selection of cells to run and the report never crash on them, and a cell
whose metrics.json holds a result is never retrained over it (results are evidence)."""
import json
from pathlib import Path

import pytest

from ftgrid import rundir
from ftgrid.launch import grid, report

METRICS = {"eval_loss": 2.5, "model": "pythia-tiny", "method": "lora", "rank": 4}
DAMAGED_STATUS = {
    "a list": "[1, 2]",
    "a string": '"done"',
    "a number": "3",
    "truncated": '{"state": "do',
    "an unknown state": '{"state": "finished"}',
    "a state of the wrong type": '{"state": ["done"]}',
    "nested absurdly": "[" * 100000,
    "not UTF-8": b"\xff\xfe{".decode("latin-1"),
}


@pytest.mark.parametrize("text", DAMAGED_STATUS.values(), ids=DAMAGED_STATUS.keys())
def test_a_damaged_status_reads_as_damaged(tmp_path, text):
    (tmp_path / "status.json").write_text(text)
    status = rundir.read_status(tmp_path)
    assert status["state"] == "damaged" and "status.json" in status["error"]
    rundir.write_status(tmp_path, "failed", error="x")  # a writer replaces it instead of crashing
    assert rundir.read_status(tmp_path)["state"] == "failed"


@pytest.mark.parametrize("text", DAMAGED_STATUS.values(), ids=DAMAGED_STATUS.keys())
def test_a_damaged_status_with_a_result_reads_as_done(tmp_path, text):
    (tmp_path / "status.json").write_text(text)
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    status = rundir.read_status(tmp_path)
    assert status["state"] == "done" and status["recovered"].startswith("from metrics.json")


def test_wrong_typed_fields_are_dropped(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps(
        {"state": "failed", "error": ["x"], "pid": "12", "job_id": 17, "started": "noon", "exit_code": True,
         "history": "h", "log_tail": "last line"}))
    status = rundir.read_status(tmp_path)
    assert status == {"state": "failed", "job_id": "17", "history": "h", "log_tail": "last line"}
    rundir.write_status(tmp_path, "failed")
    assert [h["state"] for h in rundir.read_json(tmp_path / "status.json")["history"]] == ["failed"]


def test_missing_status_with_a_result_is_done_and_a_half_written_result_is_not(tmp_path):
    assert rundir.read_status(tmp_path) == {"state": "pending"}
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS)[:20])
    assert rundir.read_status(tmp_path) == {"state": "pending"}
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    assert rundir.read_status(tmp_path)["state"] == "done"


# ---------------------------------------------------------------------------------------------
# the grid and the report on a damaged sweep

GRID_ARGS = ["--models", "pythia-tiny", "--ranks", "4,8,16", "--gpu", "cpu", "--executor", "local", "--dry-run"]


@pytest.fixture
def sweep(tmp_path, capsys) -> Path:
    out = tmp_path / "sweep"
    assert grid.main([*GRID_ARGS, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def cells(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/cell.yaml"))


def test_a_done_cell_with_truncated_status_is_not_retrained_and_a_damaged_one_is_reported(sweep, capsys):
    done, damaged, other = cells(sweep)
    (done / "metrics.json").write_text(json.dumps(METRICS))
    (done / "status.json").write_text('{"state": "done", "upd')
    (damaged / "status.json").write_text("[1, 2]")
    (other / "status.json").write_text(json.dumps({"state": "failed", "error": 3, "pid": "x", "history": "a"}))
    for rerun in ([], ["--rerun", "failed"]):
        assert grid.main([*GRID_ARGS, "--out", str(sweep), *rerun]) == 0
        out = capsys.readouterr().out
        assert f"{len(rerun) // 2} cell(s) to run" in out, out
        assert "1 damaged not run (--status lists them; --rerun damaged runs them)" in out, out
    assert json.loads((done / "metrics.json").read_text()) == METRICS
    assert grid.main(["--status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "3 cell(s): done 1, failed 1, damaged 1" in out, out
    assert f"DAMAGED {damaged.name}" in out and "status.json holds a list" in out
    assert "--rerun damaged,failed" in out
    assert grid.main([*GRID_ARGS, "--out", str(sweep), "--rerun", "damaged"]) == 0
    assert "1 cell(s) to run" in capsys.readouterr().out


def test_report_survives_absurd_metrics(sweep, capsys):
    a, b, c = cells(sweep)
    history = [{"step": 1e308, "loss": 3.0}, {"step": -5, "loss": 1e308}, {"step": 2, "eval_loss": -1e308},
               {"step": 1, "loss": 2.0}, {"step": 3, "loss": 1.5}]
    for d, rank in ((a, 0), (b, -4), (c, 1e308)):
        rundir.write_status(d, "done")
        (d / "metrics.json").write_text(json.dumps(dict(
            METRICS, rank=rank, history=history, total_params=1e308, trainable_params=-3, tokens_per_second=1e308,
            peak_memory_gib=-1, world_size=1e308, global_batch=0, lr=-1, data={"train_rows": 0}, epochs=1e308)))
    assert report.main([str(sweep)]) == 0
    rows = {r["cell"]: r for r in report.collect(sweep)}
    assert {r["rank"] for r in rows.values()} == {None}  # a rank of 0, -4 or 1e308 is damage, not a value
    assert all(r["status"] == "done" and r["eval_loss"] == 2.5 for r in rows.values())
    assert (sweep / "plots" / "loss_curves.png").is_file()


def test_report_refuses_a_folder_that_is_no_sweep(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("x")
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
