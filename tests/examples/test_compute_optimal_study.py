"""The compute-optimal LoRA study's smoke version runs end to end through the kit's own commands."""
import csv
import json
import sys

import pytest

from cells import ROOT, explain, run

# Three minutes of a study, the sum of what other tests check one by one: run with `make study-smoke`.
pytestmark = [pytest.mark.slow, pytest.mark.study]


def test_study_smoke_pretrains_finetunes_reports_and_fits(tmp_path):
    out = tmp_path / "study"
    proc = run([sys.executable, ROOT / "examples" / "compute_optimal_lora" / "study.py", "--smoke", "--out", out])
    assert proc.returncode == 0, explain(proc)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 * 2 * 2 and all(r["status"] == "done" for r in rows)
    # every fine-tune started from its pretrained base, so it begins below the uniform-guess loss ln(1024)
    assert all(float(r["untrained_eval_loss"]) < 6.9 for r in rows)
    assert len({r["params"] for r in rows}) == 2 and len({r["rank"] for r in rows}) == 2
    fit = json.loads((out / "fit_chinchilla" / "fit.json").read_text())
    assert {"E", "A", "B", "alpha", "beta"} <= set(fit) and fit["n_rows"] == 8
    # Eight noisy smoke rows may or may not give both exponents > 0: the allocation (and its isoFLOP
    # plot) exists exactly when they do, else the fit says why.
    pngs = ["fit_chinchilla/fit_observed_vs_predicted.png", "fit_chinchilla/fit_loss_vs_rank.png"]
    if fit["alpha"] > 0 and fit["beta"] > 0:
        assert fit["allocation"]["N_opt"] > 0
        pngs.append("fit_chinchilla/fit_isoflop.png")
    else:
        assert fit["allocation"] is None and "no interior optimum" in fit["allocation_note"]
        assert not (out / "fit_chinchilla" / "fit_isoflop.png").exists()
    zhang = json.loads((out / "fit_zhang_rank" / "fit.json").read_text())
    assert zhang["law"] == "zhang"
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
