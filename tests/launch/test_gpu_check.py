"""benchmarks/gpu_check.py rehearsed on the CPU (--tiny --quick): the same code path as the GPU run, with the
tiny twins of each model. Checks what the report and the CSV say, not the numbers' size (CPU RSS is not a
GPU peak)."""
import csv
import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
MEASURED = ROOT / "launch" / "measured_peaks.csv"


@pytest.mark.slow
def test_cpu_rehearsal_writes_report_rows_and_a_measured_copy(tmp_path):
    before = hashlib.sha256(MEASURED.read_bytes()).hexdigest()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--quick", "--out", str(out),
                           "--sections", "planner,oom", "--append-measured", "--budget-s", "900"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hashlib.sha256(MEASURED.read_bytes()).hexdigest() == before  # the real table is never touched on CPU

    rows = list(csv.DictReader(open(out / "cpu-rehearsal_gpu_check.csv")))
    planner = [r for r in rows if r["section"] == "planner"]
    assert {r["id"] for r in planner} == {"p00", "p01", "p05", "p25"}
    assert {r["split"] for r in planner} == {"calibration", "held-out"}
    for r in planner:
        assert r["model"].endswith("-tiny") and r["note"] == "", r
        assert math.isfinite(float(r["predicted_gib"])) and float(r["predicted_gib"]) > 0
        assert math.isfinite(float(r["measured_gib"])) and math.isfinite(float(r["error_gib"]))
    assert any(r["method"] == "qlora" for r in planner)          # bitsandbytes is installed here
    assert any(r["section"] == "oom 80GB" for r in rows)

    report = (out / "cpu-rehearsal_gpu_check.md").read_text()
    assert "cells at even positions of `PLANNER_CELLS` are calibration" in report
    assert "- held-out: 3 cells, |predicted - measured| max" in report
    assert "| pythia-6.9b full s2048 | 80GB (a100-80gb) |" in report
    assert "## tests: not asked" in report and "## throughput: not asked" in report

    copy = list(csv.DictReader(open(out / "measured_peaks.csv")))
    added = [r for r in copy if r["source"].startswith("gpu_check ")]
    assert len(added) == 4 and {r["packing"] for r in added} == {"none", "bfd"}
    assert all(r["gpu"] == "cpu" and float(r["peak_gib"]) >= 0 for r in added)
    old = [r for r in copy if not r["source"].startswith("gpu_check ")]
    assert old and all(r["packing"] in ("", None) for r in old)  # older rows read as unpacked
