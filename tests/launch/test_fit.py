"""Tests for launch.fit: scaling-law fitting, allocation, bootstrap and the CLI."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from ftgrid.launch import fit as F

# Hoffmann et al. (2022) published fit, and Epoch AI's refit (Besiroglu et al. 2024).
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
EPOCH = dict(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
ZHANG = dict(E=1.2, A=2000.0, alpha=0.25, beta=0.2)


def chinchilla_loss(p, N, D):
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def chinchilla_grid(p, *, noise=0.005, seed=0):
    """8 x 8 grid N in 1e7..1e10, D in 1e8..1e12, multiplicative log-normal noise."""
    N, D = np.meshgrid(np.logspace(7, 10, 8), np.logspace(8, 12, 8), indexing="ij")
    N, D = N.ravel(), D.ravel()
    L = chinchilla_loss(p, N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, N.size))
    return N, D, L


def zhang_grid(p, *, noise=0.005, seed=0):
    X, D = np.meshgrid(np.logspace(8, 10, 8), np.logspace(6, 9, 8), indexing="ij")
    X, D = X.ravel(), D.ravel()
    L = (p["A"] * X ** -p["alpha"] * D ** -p["beta"] + p["E"]) \
        * np.exp(np.random.default_rng(seed).normal(0, noise, X.size))
    return X, D, L


# ------------------------------------------------------------------------------------------
# core fitting
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("truth", [CHINCHILLA, EPOCH], ids=["hoffmann2022", "epoch2024"])
def test_chinchilla_recovery(truth):
    N, D, L = chinchilla_grid(truth, noise=0.005, seed=0)
    p = F.fit_chinchilla(N, D, L)
    assert p["law"] == "chinchilla"
    assert abs(p["alpha"] - truth["alpha"]) < 0.02
    assert abs(p["beta"] - truth["beta"]) < 0.02
    assert abs(p["E"] - truth["E"]) < 0.03
    # A and B are much less identified than the exponents; still within 20 %.
    assert p["A"] == pytest.approx(truth["A"], rel=0.2)
    assert p["B"] == pytest.approx(truth["B"], rel=0.2)
    # Consistent log-space parameters, and the law reproduces the noiseless losses.
    assert p["E"] == pytest.approx(math.exp(p["e"]))
    assert p["A"] == pytest.approx(math.exp(p["a"]))
    rel = F.predict(p, N, D) / chinchilla_loss(truth, N, D) - 1
    assert np.max(np.abs(rel)) < 0.01
    assert p["info"]["n_starts_grid"] == 4500 and p["info"]["n_starts_lbfgs"] == 30


def test_chinchilla_noiseless_is_exact():
    N, D, L = chinchilla_grid(CHINCHILLA, noise=0.0)
    p = F.fit_chinchilla(N, D, L)
    for k in ("alpha", "beta"):
        assert p[k] == pytest.approx(CHINCHILLA[k], abs=2e-3)
    for k in ("E", "A", "B"):
        assert p[k] == pytest.approx(CHINCHILLA[k], rel=2e-2)


def test_zhang_recovery():
    X, D, L = zhang_grid(ZHANG)
    p = F.fit_zhang(X, D, L)
    assert p["law"] == "zhang" and p["B"] is None
    assert abs(p["alpha"] - ZHANG["alpha"]) < 0.02
    assert abs(p["beta"] - ZHANG["beta"]) < 0.02
    assert abs(p["E"] - ZHANG["E"]) < 0.03
    assert p["A"] == pytest.approx(ZHANG["A"], rel=0.3)
    # The multiplicative law is not the additive one: a Chinchilla fit of these data has a
    # clearly worse objective than the Zhang fit.
    assert p["objective"] < F.fit_chinchilla(X, D, L, top_k=3)["objective"]


@pytest.mark.parametrize("spec,theta", [
    (F._CHINCHILLA_SPEC, np.array([3.0, 4.0, 0.4, 0.3, 0.25])),
    (F._ZHANG_SPEC, np.array([5.0, 0.2, 0.3, 0.2])),
])
@pytest.mark.parametrize("delta", [1e-3, 10.0])
def test_analytic_gradient_matches_finite_differences(spec, theta, delta):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, size=(40, 2))
    y = rng.normal(1.0, 0.3, size=40)
    f0, g = F._objective_and_grad(theta, x, y, spec, delta)
    h = 1e-6
    num = np.array([(F._objective_and_grad(theta + h * e, x, y, spec, delta)[0]
                     - F._objective_and_grad(theta - h * e, x, y, spec, delta)[0]) / (2 * h)
                    for e in np.eye(theta.size)])
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-7)


def test_huber_is_quadratic_then_linear():
    r = np.array([-1.0, -1e-3, 0.0, 5e-4, 2.0])
    np.testing.assert_allclose(F.huber(r, 1e-3),
                               [1e-3 * (1 - 5e-4), 5e-7, 0.0, 1.25e-7, 1e-3 * (2 - 5e-4)])


def test_huber_fit_is_robust_to_outliers():
    rng = np.random.default_rng(0)
    N, D = np.meshgrid(np.logspace(7, 10, 8), np.logspace(8, 12, 8), indexing="ij")
    N, D = N.ravel(), D.ravel()
    L = chinchilla_loss(CHINCHILLA, N, D) * np.exp(rng.normal(0, 0.005, N.size))
    L[rng.choice(N.size, 3, replace=False)] *= 3.0  # 3 wild outliers among 64 points
    huber = F.fit_chinchilla(N, D, L)
    lsq = F.fit_chinchilla(N, D, L, delta=1e3)  # delta >> residuals: plain least squares
    err_h = abs(huber["alpha"] - CHINCHILLA["alpha"])
    err_l = abs(lsq["alpha"] - CHINCHILLA["alpha"])
    assert err_h < 0.05
    assert err_h < err_l
    assert err_l > 0.05  # the least-squares fit is visibly pulled off


def test_bad_core_inputs_raise():
    N, D, L = chinchilla_grid(CHINCHILLA)
    with pytest.raises(ValueError, match="at least 5"):
        F.fit_chinchilla(N[:4], D[:4], L[:4])
    L2 = L.copy()
    L2[3] = 0.0
    with pytest.raises(ValueError, match="> 0"):
        F.fit_chinchilla(N, D, L2)
    with pytest.raises(ValueError, match="expected"):
        F.fit_chinchilla(N, D[:-1], L)


# ------------------------------------------------------------------------------------------
# allocation
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("truth", [CHINCHILLA, EPOCH], ids=["hoffmann2022", "epoch2024"])
@pytest.mark.parametrize("k", [6, 4], ids=["full-6ND", "lora-4ND"])
def test_compute_optimal_closed_form(truth, k):
    C = 1e21
    A, B, a, b = truth["A"], truth["B"], truth["alpha"], truth["beta"]
    G = (a * A / (b * B)) ** (1 / (a + b))
    n_expected = G * (C / k) ** (b / (a + b))
    d_expected = (C / k) / n_expected
    n_opt, d_opt = F.compute_optimal(dict(truth, law="chinchilla"), C, flops_per_token_param=k)
    assert n_opt == pytest.approx(n_expected, rel=1e-9)
    assert d_opt == pytest.approx(d_expected, rel=1e-9)
    assert k * n_opt * d_opt == pytest.approx(C, rel=1e-9)
    # And it really is the minimum of the loss along the isoFLOP curve (brute force).
    ns = n_opt * np.logspace(-1, 1, 20001)
    losses = chinchilla_loss(truth, ns, C / (k * ns))
    assert ns[np.argmin(losses)] == pytest.approx(n_opt, rel=1e-3)


def test_lora_allocation_vs_full():
    # C = 4ND instead of 6ND: same tokens-per-parameter ratio curve, more N*D for the budget.
    n6, d6 = F.compute_optimal(CHINCHILLA, 1e21, 6)
    n4, d4 = F.compute_optimal(CHINCHILLA, 1e21, 4)
    expo = CHINCHILLA["beta"] / (CHINCHILLA["alpha"] + CHINCHILLA["beta"])
    assert n4 / n6 == pytest.approx(1.5 ** expo, rel=1e-9)
    assert d4 / d6 == pytest.approx(1.5 ** (1 - expo), rel=1e-9)
    # Published Chinchilla law at 1e21 FLOPs (6ND): a few billion parameters.
    assert 1e9 < n6 < 1e10


def test_compute_optimal_rejects_zhang_law_and_bad_budget():
    with pytest.raises(ValueError):
        F.compute_optimal(dict(ZHANG, law="zhang", B=None), 1e21)
    with pytest.raises(ValueError):
        F.compute_optimal(CHINCHILLA, -1.0)


# ------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def epoch_data_and_fit():
    N, D, L = chinchilla_grid(EPOCH, noise=0.005, seed=2)
    return N, D, L, F.fit_chinchilla(N, D, L)


def test_bootstrap_deterministic_for_seed(epoch_data_and_fit):
    N, D, L, p = epoch_data_and_fit
    b1 = F.bootstrap(N, D, L, n_boot=15, seed=7, start=p, budget=1e21)
    b2 = F.bootstrap(N, D, L, n_boot=15, seed=7, start=p, budget=1e21)
    b3 = F.bootstrap(N, D, L, n_boot=15, seed=8, start=p, budget=1e21)
    for k in ("E", "A", "B", "alpha", "beta", "N_opt", "D_opt"):
        assert b1["samples"][k].shape == (15,)
        np.testing.assert_array_equal(b1["samples"][k], b2["samples"][k])
        assert b1["intervals"][k] == b2["intervals"][k]
        lo, hi = b1["intervals"][k]
        assert lo < hi
    assert not np.array_equal(b1["samples"]["alpha"], b3["samples"]["alpha"])
    # The point estimate lies inside its own percentile interval, and the interval is narrow.
    lo, hi = b1["intervals"]["alpha"]
    assert lo <= p["alpha"] <= hi and hi - lo < 0.05


def test_bootstrap_zhang():
    X, D, L = zhang_grid(ZHANG, seed=1)
    b = F.bootstrap(X, D, L, law="zhang", n_boot=8, seed=0)
    assert set(b["intervals"]) == {"E", "A", "alpha", "beta"}
    lo, hi = b["intervals"]["beta"]
    assert lo < hi and lo - 0.03 < ZHANG["beta"] < hi + 0.03


def test_best_rank_picks_lowest_mean_loss_at_closest_size():
    N = np.array([1e8] * 4 + [1e9] * 4)
    R = np.array([4, 8, 4, 8, 4, 8, 4, 8], float)
    L = np.array([3.0, 2.9, 3.0, 2.9, 2.5, 2.6, 2.5, 2.6])
    assert F.best_rank(N, R, L, n_ref=1.5e8)["rank"] == 8
    b = F.best_rank(N, R, L, n_ref=5e9)
    assert b["rank"] == 4 and b["model_size"] == 1e9 and b["mean_loss"] == pytest.approx(2.5)


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

def write_results_csv(path, *, rows=None):
    """4 model sizes x 4 token counts x 3 LoRA ranks from the published law (+ a failed run)."""
    rng = np.random.default_rng(0)
    if rows is None:
        rows = []
        for N in np.logspace(7, 10, 4):
            for D in np.logspace(8, 12, 4):
                for r in (4, 16, 64):
                    # Rank 16 is (slightly) best at every size.
                    L = chinchilla_loss(CHINCHILLA, N, D) * (1 + 0.004 * abs(math.log2(r) - 4))
                    L *= math.exp(rng.normal(0, 0.003))
                    rows.append({"model": f"m{N:.0e}", "params": f"{N:.6g}", "tokens": f"{D:.6g}",
                                 "rank": r, "adapter_params": f"{r * 1e5:.6g}",
                                 "eval_loss": f"{L:.6f}"})
        rows.append({"model": "crashed", "params": "1e9", "tokens": "1e10", "rank": 16,
                     "adapter_params": "1.6e6", "eval_loss": ""})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def assert_png_with_content(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    rgb = img[..., :3]
    # Not a blank canvas: a real share of non-white pixels in several colours.
    non_white = np.any(rgb < 0.95, axis=-1).mean()
    assert non_white > 0.02
    assert len(np.unique((rgb.reshape(-1, 3) * 255).astype(int), axis=0)) > 20


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("fitcli")
    csv_path = write_results_csv(d / "results.csv")
    rc = F.main([str(csv_path), "--budget", "1e21", "--flops", "lora", "--bootstrap", "12",
                 "--seed", "3"])  # no --out: writes next to the CSV
    return d, rc


def test_cli_writes_fit_json_and_plots(cli_run):
    d, rc = cli_run
    assert rc == 0
    res = json.loads((d / "fit.json").read_text())
    for k in ("E", "A", "B", "alpha", "beta", "intervals", "allocation", "residuals"):
        assert k in res
    assert abs(res["alpha"] - CHINCHILLA["alpha"]) < 0.03
    assert set(res["intervals"]) == {"E", "A", "B", "alpha", "beta"}
    assert res["n_rows"] == 48 and res["n_rows_dropped"] == 1
    assert len(res["residuals"]) == 48
    for row in res["residuals"]:
        assert row["residual"] == pytest.approx(row["observed"] - row["predicted"])
        assert row["predicted"] == pytest.approx(F.predict(res, row["params"], row["tokens"]))
    alloc = res["allocation"]
    assert alloc["flops_per_token_param"] == 4 and alloc["budget_flops"] == 1e21
    n_opt, d_opt = F.compute_optimal(res, 1e21, 4)
    assert alloc["N_opt"] == pytest.approx(n_opt) and alloc["D_opt"] == pytest.approx(d_opt)
    lo, hi = alloc["intervals"]["N_opt"]
    assert lo < hi and lo < alloc["N_opt"] * 1.5 and hi > alloc["N_opt"] / 1.5
    assert res["best_rank"]["rank"] == 16
    for name in ("fit_observed_vs_predicted.png", "fit_isoflop.png", "fit_loss_vs_rank.png"):
        assert_png_with_content(d / name)


def test_cli_json_stdout(tmp_path, capsys):
    csv_path = write_results_csv(tmp_path / "r.csv")
    out = tmp_path / "out"
    rc = F.main([str(csv_path), "--json", "--bootstrap", "5", "--budget", "1e19",
                 "--out", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)  # stdout holds only the JSON object
    assert {"E", "A", "B", "alpha", "beta", "intervals", "allocation"} <= set(res)
    assert all(isinstance(res[k], float) for k in ("E", "A", "B", "alpha", "beta"))
    assert res["allocation"]["flops_per_token_param"] == 6
    assert (out / "fit.json").is_file() and (out / "fit_isoflop.png").is_file()


def test_cli_zhang_law(tmp_path, capsys):
    X, D, L = zhang_grid(ZHANG)
    rows = [{"adapter_params": f"{x:.6g}", "tokens": f"{d:.6g}", "eval_loss": f"{l:.6f}"}
            for x, d, l in zip(X, D, L)]
    csv_path = write_results_csv(tmp_path / "z.csv", rows=rows)
    rc = F.main([str(csv_path), "--law", "zhang", "--x-col", "adapter_params", "--json",
                 "--bootstrap", "0", "--budget", "1e20"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["law"] == "zhang" and res["B"] is None and res["allocation"] is None
    assert abs(res["beta"] - ZHANG["beta"]) < 0.02
    assert "allocation_note" in res


def test_cli_bad_column_exit_2(tmp_path, capsys):
    csv_path = write_results_csv(tmp_path / "r.csv")
    rc = F.main([str(csv_path), "--loss-col", "val_loss_missing"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "val_loss_missing" in err and "available columns" in err and "eval_loss" in err
    assert not (tmp_path / "fit.json").exists()


@pytest.mark.parametrize("case", ["missing_file", "few_rows", "non_positive", "text_column"])
def test_cli_bad_input_exit_2(tmp_path, capsys, case):
    csv_path = tmp_path / "r.csv"
    args = [str(csv_path)]
    if case == "missing_file":
        expect = "not found"
    elif case == "few_rows":
        write_results_csv(csv_path, rows=[{"params": "1e8", "tokens": "1e9", "eval_loss": "3"}] * 4)
        expect = "at least 5"
    elif case == "non_positive":
        rows = [{"params": "1e8", "tokens": f"{t}", "eval_loss": "3"} for t in (1e9, 2e9, 0, 4e9, 5e9, 6e9)]
        write_results_csv(csv_path, rows=rows)
        expect = "'tokens' has non-positive value 0"
    else:
        write_results_csv(csv_path)
        args += ["--n-col", "model"]
        expect = "'model'"
    assert F.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and expect in err


def test_module_entry_point_exit_code(tmp_path):
    csv_path = write_results_csv(tmp_path / "r.csv")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "launch.fit", str(csv_path), "--d-col", "toks"],
                          capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 2
    assert "'toks'" in proc.stderr and "tokens" in proc.stderr
