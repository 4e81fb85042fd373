"""Compute-optimal scaling-law fitting for fine-tuning grids ("Chinchilla, but with LoRA").

Usage::

    python -m launch.fit results.csv [--n-col params] [--d-col tokens] [--loss-col eval_loss]
                         [--law chinchilla|zhang] [--x-col params] [--budget 1e19]
                         [--flops full|lora] [--bootstrap 200] [--seed 0] [--json] [--out DIR]

Laws
----
* ``chinchilla`` (default): the parametric law of Hoffmann et al. (2022),
  ``L(N, D) = E + A / N**alpha + B / D**beta``, N = model parameters, D = training tokens.
* ``zhang``: the multiplicative fine-tuning law of Zhang et al. (ICLR 2024, "When scaling meets
  LLM finetuning"), ``L(X, D) = A * X**-alpha * D**-beta + E``, X = base-model size, LoRA rank
  or adapter parameter count (``--x-col``), D = fine-tuning tokens.

Both are fitted like Hoffmann et al.'s Approach 3: in log space with A = e^a, B = e^b, E = e^e,
the prediction is ``log L_hat = LSE(a - alpha log N, b - beta log D, e)`` (Zhang:
``LSE(a - alpha log X - beta log D, e)``) and we minimise the Huber loss (delta = 1e-3) of
``log L_hat - log L`` with scipy's L-BFGS-B (analytic gradient) from a grid of starting points,
keeping the best optimum.  Bootstrap (rows resampled with replacement, each refit started from
the point estimate) gives 95 % percentile intervals.

FLOP accounting used by ``--budget C``
--------------------------------------
* Full fine-tuning (``--flops full``, default): per token, the forward pass costs 2N FLOPs and
  the backward pass 4N (2N for gradients w.r.t. activations, 2N for gradients w.r.t. weights),
  so ``C ~= 6 N D``.
* LoRA (``--flops lora``): the base weights are frozen, so the backward pass still propagates
  activation gradients through them (2N) but computes no weight gradients: forward 2N + backward
  2N = ``4 N D`` for the base model, plus ``6 P D`` for the P adapter parameters, which is
  negligible (P << N; e.g. rank 16 on a 7B model is P/N ~ 0.6 %), so ``C ~= 4 N D``.
  (Recomputation / gradient checkpointing would add another forward pass, 2N, not modelled.)

With ``C = k N D`` (k = 6 or 4), minimising ``A/N^alpha + B/D^beta`` on the isoFLOP curve gives
``N_opt = G (C/k)^(beta/(alpha+beta))``, ``G = (alpha A / (beta B))^(1/(alpha+beta))``,
``D_opt = (C/k) / N_opt``.  (For the Zhang law, which is multiplicative, the isoFLOP loss is
monotone in X, so there is no interior optimum and no allocation is reported.)

Outputs
-------
A readable summary on stdout (or, with ``--json``, only the JSON object), and in ``--out``
(default: the CSV's folder): ``fit.json`` (parameters, intervals, per-row residuals, allocation,
best rank), ``fit_observed_vs_predicted.png``, ``fit_isoflop.png`` (Chinchilla law only) and
``fit_loss_vs_rank.png`` (when the CSV has a rank column).  Bad input (missing file/column,
< 5 usable rows, non-positive values) prints one ``error: ...`` line on stderr and exits 2.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp
from ftgrid.cli import CliParser
from ftgrid.errors import one_line
from ftgrid import validate

__all__ = [
    "fit_chinchilla",
    "fit_zhang",
    "predict",
    "compute_optimal",
    "bootstrap",
    "best_rank",
    "huber",
    "main",
    "FLOPS_PER_TOKEN_PARAM",
]

#: FLOPs per (parameter x token): full fine-tuning 6 (fwd 2 + bwd 4); LoRA 4 (fwd 2 + bwd 2,
#: frozen base weights need no weight gradients; the adapter's 6*P*D is neglected).
FLOPS_PER_TOKEN_PARAM = {"full": 6.0, "lora": 4.0}

DEFAULT_DELTA = 1e-3
MIN_ROWS = 5
# Number of grid starts refined with L-BFGS-B (see _fit_lse).
DEFAULT_TOP_K = 30

# Hoffmann et al.'s initialisation grid.
_GRID_EXP = np.arange(0.0, 2.0 + 1e-9, 0.5)  # alpha, beta: 0, 0.5, ..., 2
_GRID_E = np.arange(-1.0, 1.0 + 1e-9, 0.5)  # e: -1, -0.5, ..., 1
_GRID_AB = np.arange(0.0, 25.0 + 1e-9, 5.0)  # a, b: 0, 5, ..., 25


class InputError(ValueError):
    """Bad user input; main() prints it as one ``error: ...`` line and returns 2."""


# --------------------------------------------------------------------------------------------
# Generic "log-sum-exp of linear terms" model and its Huber objective
# --------------------------------------------------------------------------------------------
#
# A law is described by a parameter-name tuple and a list of terms.  Term j contributes
#     z_j = theta[const_j] - sum_{(p, k)} theta[p] * x_k
# where x_k is a log-feature (log N, log D, ...), and log L_hat = logsumexp_j z_j.
# Chinchilla: params (a, b, e, alpha, beta); terms [a - alpha xN, b - beta xD, e].
# Zhang:      params (a, e, alpha, beta);    terms [a - alpha xX - beta xD, e].

_Spec = Tuple[Tuple[int, Tuple[Tuple[int, int], ...]], ...]

_CHINCHILLA_NAMES = ("a", "b", "e", "alpha", "beta")
_CHINCHILLA_SPEC: _Spec = ((0, ((3, 0),)), (1, ((4, 1),)), (2, ()))
_ZHANG_NAMES = ("a", "e", "alpha", "beta")
_ZHANG_SPEC: _Spec = ((0, ((2, 0), (3, 1))), (1, ()))


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Elementwise Huber loss: r^2/2 for |r| <= delta, delta(|r| - delta/2) beyond."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _terms(theta: np.ndarray, x: np.ndarray, spec: _Spec) -> np.ndarray:
    """theta (..., P), x (n, K) -> z (..., n, J)."""
    z = np.empty(theta.shape[:-1] + (x.shape[0], len(spec)))
    for j, (const, exps) in enumerate(spec):
        zj = theta[..., const, None]
        for p, k in exps:
            zj = zj - theta[..., p, None] * x[:, k]
        z[..., j] = zj
    return z


def _objective_scale(delta: float) -> float:
    # The objective is mean(huber)/min(delta, 1).  Dividing by delta keeps it O(|r|) for the
    # small Hoffmann delta (the raw sum is ~1e-5 and would trip L-BFGS-B's absolute ftol/gtol
    # early); capping at 1 keeps a "plain least squares" fit (huge delta) at O(r^2) instead of
    # vanishing.  Scaling does not change the minimiser.
    return 1.0 / (min(float(delta), 1.0))


def _grid_objective(thetas: np.ndarray, x: np.ndarray, y: np.ndarray, spec: _Spec,
                    delta: float) -> np.ndarray:
    """Objective at many parameter vectors at once: thetas (G, P) -> (G,). Chunked in G."""
    n = x.shape[0]
    out = np.empty(thetas.shape[0])
    chunk = max(1, int(2_000_000 // max(1, n * len(spec))))
    scale = _objective_scale(delta)
    for s in range(0, thetas.shape[0], chunk):
        z = _terms(thetas[s:s + chunk], x, spec)
        r = logsumexp(z, axis=-1) - y
        out[s:s + chunk] = huber(r, delta).mean(axis=-1) * scale
    return out


def _objective_and_grad(theta: np.ndarray, x: np.ndarray, y: np.ndarray, spec: _Spec,
                        delta: float, weights: Optional[np.ndarray] = None
                        ) -> Tuple[float, np.ndarray]:
    z = _terms(theta, x, spec)  # (n, J)
    # Stable log-sum-exp by hand (max shift), same maths as scipy.special.logsumexp, which is
    # used for the vectorised grid evaluation; here it would cost ~0.3 ms of array-API dispatch
    # per call, dominating the ~3-4k objective calls of a fit.  The shifted exponentials are
    # reused as the softmax weights d lse / d z_j of the analytic gradient.
    zmax = z.max(axis=-1, keepdims=True)
    ez = np.exp(z - zmax)
    sez = ez.sum(axis=-1)
    lse = np.log(sez) + zmax[:, 0]
    w = ez / sez[:, None]
    r = lse - y
    scale = _objective_scale(delta)
    if weights is None:
        wt = np.full(r.shape, 1.0 / r.shape[0])
    else:
        wt = weights
    f = float(np.sum(wt * huber(r, delta))) * scale
    g_r = wt * np.clip(r, -delta, delta) * scale  # d f / d r_i
    grad = np.zeros_like(theta)
    for j, (const, exps) in enumerate(spec):
        gw = g_r * w[:, j]
        grad[const] += gw.sum()
        for p, k in exps:
            grad[p] -= gw @ x[:, k]
    return f, grad


def _center(theta_raw: np.ndarray, mu: np.ndarray, spec: _Spec, sign: float) -> np.ndarray:
    """Convert between raw constants (a, b, ...) and constants of the centred features.

    With x_c = x - mu, ``a - alpha x = (a - alpha mu) - alpha x_c``; optimising over the centred
    constant decorrelates it from the exponent (log N ~ 20 makes the raw problem badly
    conditioned).  sign=-1: raw -> centred; sign=+1: centred -> raw.  Works on (..., P).
    """
    t = np.array(theta_raw, dtype=float, copy=True)
    for const, exps in spec:
        for p, k in exps:
            t[..., const] += sign * theta_raw[..., p] * mu[k]
    return t


def _single_thread_blas():
    """Limit BLAS to one thread while optimising (if threadpoolctl is available).

    scipy >= 1.15's L-BFGS-B calls BLAS on 5-vectors; with a multi-threaded OpenBLAS on a busy
    machine each call can take ~1 ms of thread hand-off instead of microseconds.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional speed-up only
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _start_grid(names: Sequence[str]) -> np.ndarray:
    axes = []
    for nm in names:
        if nm in ("alpha", "beta"):
            axes.append(_GRID_EXP)
        elif nm == "e":
            axes.append(_GRID_E)
        else:  # a, b
            axes.append(_GRID_AB)
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def _fit_lse(feats: np.ndarray, L: np.ndarray, names: Sequence[str], spec: _Spec, *,
             delta: float, init: Optional[np.ndarray], top_k: int,
             weights: Optional[np.ndarray] = None) -> Tuple[np.ndarray, float, Dict[str, Any]]:
    """Fit; returns (theta_raw, objective, info). feats are the raw positive features."""
    x_raw = np.log(feats)
    mu = x_raw.mean(axis=0)
    x = x_raw - mu
    y = np.log(L)
    if init is not None:
        starts_raw = np.atleast_2d(np.asarray(init, dtype=float))
        n_grid = 0
    else:
        # Hoffmann et al. run L-BFGS from every point of the grid (4500 starts for Chinchilla).
        # Most starts converge to the same optimum, so we evaluate the (vectorised) objective at
        # all grid points first and refine only the best `top_k` (30) with L-BFGS-B: ~150x less
        # work, and in tests the optimum found is the same as from the full grid.
        grid = _start_grid(names)
        n_grid = grid.shape[0]
        vals = _grid_objective(_center(grid, mu, spec, -1.0), x, y, spec, delta)
        k = min(top_k, n_grid)
        idx = np.argpartition(vals, k - 1)[:k]
        idx = idx[np.argsort(vals[idx], kind="stable")]
        starts_raw = grid[idx]
    starts = _center(starts_raw, mu, spec, -1.0)
    best_theta, best_f, best_res = None, math.inf, None
    with _single_thread_blas():
        for t0 in starts:
            res = minimize(_objective_and_grad, t0, args=(x, y, spec, delta, weights),
                           jac=True, method="L-BFGS-B",
                           options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})
            if np.all(np.isfinite(res.x)) and res.fun < best_f:
                best_theta, best_f, best_res = res.x, float(res.fun), res
    if best_theta is None:  # pragma: no cover - all starts diverged
        raise RuntimeError("scaling-law fit failed: no finite optimum")
    theta_raw = _center(best_theta, mu, spec, +1.0)
    info = {"n_starts_grid": n_grid, "n_starts_lbfgs": int(starts.shape[0]),
            "converged": bool(best_res.success), "message": str(best_res.message),
            "nit": int(best_res.nit)}
    return theta_raw, best_f, info


def _as_pos_array(v: Any, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=float).ravel()
    if a.size and (not np.all(np.isfinite(a)) or np.any(a <= 0)):
        raise ValueError(f"{name} must be finite and > 0")
    return a


def _check_inputs(arrays: Dict[str, np.ndarray]) -> int:
    n = None
    for nm, a in arrays.items():
        if n is None:
            n = a.size
        elif a.size != n:
            raise ValueError(f"{nm} has {a.size} values, expected {n}")
    if n is None or n < MIN_ROWS:
        raise ValueError(f"need at least {MIN_ROWS} rows to fit, got {n}")
    return n


def fit_chinchilla(N: Any, D: Any, L: Any, *, delta: float = DEFAULT_DELTA,
                   init: Optional[Dict[str, float]] = None, top_k: int = DEFAULT_TOP_K,
                   weights: Optional[Any] = None) -> Dict[str, Any]:
    """Fit L = E + A/N^alpha + B/D^beta (Hoffmann et al. Approach 3). Pure, no I/O.

    ``init`` (a previous result dict) skips the grid and starts L-BFGS-B only from it.
    ``weights`` (optional, per row, summing to anything) weights the Huber terms.
    Returns a dict with E, A, B, alpha, beta, a, b, e, objective, n, delta, law, info.
    """
    N, D, L = _as_pos_array(N, "N"), _as_pos_array(D, "D"), _as_pos_array(L, "L")
    n = _check_inputs({"N": N, "D": D, "L": L})
    w = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    t0 = None if init is None else np.array([init[k] for k in _CHINCHILLA_NAMES], float)
    theta, f, info = _fit_lse(np.column_stack([N, D]), L, _CHINCHILLA_NAMES, _CHINCHILLA_SPEC,
                              delta=delta, init=t0, top_k=top_k, weights=w)
    a, b, e, alpha, beta = (float(v) for v in theta)
    return {"law": "chinchilla", "E": math.exp(e), "A": math.exp(a), "B": math.exp(b),
            "alpha": alpha, "beta": beta, "a": a, "b": b, "e": e,
            "objective": f, "n": n, "delta": float(delta), "info": info}


def fit_zhang(X: Any, D: Any, L: Any, *, delta: float = DEFAULT_DELTA,
              init: Optional[Dict[str, float]] = None, top_k: int = DEFAULT_TOP_K,
              weights: Optional[Any] = None) -> Dict[str, Any]:
    """Fit Zhang et al.'s multiplicative law L = A X^-alpha D^-beta + E. Pure, no I/O.

    Same Huber/log-space method: log L_hat = LSE(a - alpha log X - beta log D, e); start grid
    alpha, beta in {0..2}, e in {-1..1}, a in {0..25} (750 points, best ``top_k`` refined).
    """
    X, D, L = _as_pos_array(X, "X"), _as_pos_array(D, "D"), _as_pos_array(L, "L")
    n = _check_inputs({"X": X, "D": D, "L": L})
    w = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    t0 = None if init is None else np.array([init[k] for k in _ZHANG_NAMES], float)
    theta, f, info = _fit_lse(np.column_stack([X, D]), L, _ZHANG_NAMES, _ZHANG_SPEC,
                              delta=delta, init=t0, top_k=top_k, weights=w)
    a, e, alpha, beta = (float(v) for v in theta)
    return {"law": "zhang", "E": math.exp(e), "A": math.exp(a), "B": None,
            "alpha": alpha, "beta": beta, "a": a, "e": e,
            "objective": f, "n": n, "delta": float(delta), "info": info}


def predict(params: Dict[str, Any], N: Any, D: Any) -> np.ndarray:
    """Predicted loss for a fitted law (N is X for the Zhang law)."""
    N = np.asarray(N, float)
    D = np.asarray(D, float)
    if params.get("law", "chinchilla") == "zhang":
        return params["A"] * N ** -params["alpha"] * D ** -params["beta"] + params["E"]
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def compute_optimal(params: Dict[str, Any], C: float,
                    flops_per_token_param: float = 6) -> Tuple[float, float]:
    """Compute-optimal (N_opt, D_opt) for budget C FLOPs with C = k N D (k=6 full, 4 LoRA).

    N_opt = G (C/k)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)),
    D_opt = (C/k)/N_opt.  Needs the Chinchilla (additive) law.
    """
    if params.get("law", "chinchilla") != "chinchilla" or params.get("B") is None:
        raise ValueError("compute_optimal needs the additive Chinchilla law (A, B, alpha, beta)")
    A, B, alpha, beta = (float(params[k]) for k in ("A", "B", "alpha", "beta"))
    if C <= 0 or flops_per_token_param <= 0:
        raise ValueError("budget and flops_per_token_param must be > 0")
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"no interior optimum for alpha={alpha:g}, beta={beta:g} (need > 0)")
    S = float(C) / float(flops_per_token_param)  # = N * D
    # Work in logs so extreme parameters do not overflow.
    log_G = (math.log(alpha * A) - math.log(beta * B)) / (alpha + beta)
    log_N = log_G + beta / (alpha + beta) * math.log(S)
    log_D = math.log(S) - log_N
    return math.exp(log_N), math.exp(log_D)


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------

_REPORTED = {"chinchilla": ("E", "A", "B", "alpha", "beta"), "zhang": ("E", "A", "alpha", "beta")}


def bootstrap(N: Any, D: Any, L: Any, *, law: str = "chinchilla", n_boot: int = 200,
              seed: int = 0, start: Optional[Dict[str, Any]] = None,
              delta: float = DEFAULT_DELTA, level: float = 0.95,
              budget: Optional[float] = None, flops_per_token_param: float = 6
              ) -> Dict[str, Any]:
    """Percentile bootstrap: resample rows with replacement, refit from ``start``.

    N is X for the Zhang law.  ``start`` defaults to the full fit (grid search); each resample
    is refitted with one L-BFGS-B run started from it (fast, and keeps the bootstrap around the
    same optimum).  Deterministic for a given seed.  Returns ``samples`` (name -> array),
    ``intervals`` (name -> [lo, hi]) and, with ``budget``, N_opt/D_opt samples and intervals.
    """
    fit = {"chinchilla": fit_chinchilla, "zhang": fit_zhang}[law]
    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    if start is None:
        start = fit(N, D, L, delta=delta)
    names = list(_REPORTED[law])
    if budget is not None and law == "chinchilla":
        names += ["N_opt", "D_opt"]
    rng = np.random.default_rng(seed)
    n = N.size
    samples: Dict[str, List[float]] = {k: [] for k in names}
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)
        # Refit on the resample as row weights (counts) rather than duplicated rows: identical
        # objective, fewer rows to evaluate.
        counts = np.bincount(idx, minlength=n).astype(float)
        keep = counts > 0
        p = fit(N[keep], D[keep], L[keep], delta=delta, init=start, weights=counts[keep]) \
            if keep.sum() >= MIN_ROWS else None
        if p is None:  # pragma: no cover - only for tiny data sets
            continue
        for k in _REPORTED[law]:
            samples[k].append(p[k])
        if "N_opt" in samples:
            try:
                no, do = compute_optimal(p, budget, flops_per_token_param)
            except ValueError:
                no, do = math.nan, math.nan
            samples["N_opt"].append(no)
            samples["D_opt"].append(do)
    arr = {k: np.asarray(v, float) for k, v in samples.items()}
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    intervals = {}
    for k, v in arr.items():
        v = v[np.isfinite(v)]
        intervals[k] = [float(x) for x in np.percentile(v, q)] if v.size else [math.nan] * 2
    return {"samples": arr, "intervals": intervals, "n_boot": int(n_boot), "seed": int(seed),
            "level": float(level)}


# --------------------------------------------------------------------------------------------
# Best rank
# --------------------------------------------------------------------------------------------

def best_rank(N: Any, rank: Any, L: Any, n_ref: float) -> Optional[Dict[str, Any]]:
    """Best LoRA rank at the model size in the data closest (in log space) to ``n_ref``.

    Deliberately simple: among rows with that model size and a numeric rank, average the
    observed loss per rank (over all D) and pick the lowest mean.  Returns None if no such rows.
    """
    N = np.asarray(N, float)
    R = np.asarray(rank, float)
    L = np.asarray(L, float)
    ok = np.isfinite(R) & np.isfinite(N) & (N > 0)
    if not ok.any():
        return None
    sizes = np.unique(N[ok])
    n_sel = float(sizes[np.argmin(np.abs(np.log(sizes) - math.log(n_ref)))])
    m = ok & (N == n_sel)
    by_rank = {}
    for r in np.unique(R[m]):
        rows = m & (R == r)
        by_rank[float(r)] = (float(L[rows].mean()), int(rows.sum()))
    r_best = min(by_rank, key=lambda r: (by_rank[r][0], r))
    return {"model_size": n_sel, "rank": _num(r_best), "mean_loss": by_rank[r_best][0],
            "n_rows": by_rank[r_best][1],
            "mean_loss_by_rank": {str(_num(r)): v[0] for r, v in sorted(by_rank.items())},
            "method": "lowest mean observed loss (over all D) among rows at the model size "
                      "closest in log space to the reference size"}


def _num(v: float) -> Any:
    return int(v) if float(v).is_integer() else float(v)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _read_csv(path: str) -> Tuple[List[str], List[Dict[str, str]]]:
    if not os.path.exists(path):
        raise InputError(f"results file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"results path is a directory, expected a CSV file: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v if isinstance(v, str) else "")
                     for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if not header:
        raise InputError(f"{path} is empty or has no header row")
    return header, rows


def _parse(s: str) -> float:
    try:
        return float(s.strip())
    except (ValueError, AttributeError):
        return math.nan


def _extract(header: List[str], rows: List[Dict[str, str]], cols: Dict[str, str], path: str
             ) -> Tuple[Dict[str, np.ndarray], np.ndarray, int]:
    """Numeric arrays for the fit columns; rows with empty/non-numeric/nan values are dropped."""
    avail = ", ".join(header)
    for role, c in cols.items():
        if c not in header:
            raise InputError(f"column '{c}' ({role}) not found in {path}; "
                             f"available columns: {avail}")
    vals = {c: np.array([_parse(r.get(c, "")) for r in rows], float) for c in set(cols.values())}
    for role, c in cols.items():
        if rows and not np.isfinite(vals[c]).any():
            example = next((r.get(c, "") for r in rows if (r.get(c) or "").strip()), "")
            raise InputError(f"column '{c}' ({role}) has no numeric values (e.g. {example!r}); "
                             f"available columns: {avail}")
    for c, v in vals.items():
        bad = np.isfinite(v) & (v <= 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"column '{c}' has non-positive value {_num(v[i])} at data row "
                             f"{i + 1} (all of {', '.join(sorted(set(cols.values())))} must be "
                             f"> 0 for a log-space fit); available columns: {avail}")
    usable = np.ones(len(rows), bool)
    for v in vals.values():
        usable &= np.isfinite(v)
    n_use = int(usable.sum())
    if n_use < MIN_ROWS:
        unparsed = {c: int((~np.isfinite(v)).sum()) for c, v in vals.items()}
        detail = ", ".join(f"'{c}': {k} empty/non-numeric" for c, k in sorted(unparsed.items()))
        raise InputError(f"need at least {MIN_ROWS} usable rows, {path} has {n_use} of "
                         f"{len(rows)} ({detail}); available columns: {avail}")
    return {c: v[usable] for c, v in vals.items()}, usable, len(rows) - n_use


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return [_jsonable(v) for v in o.tolist()]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        o = float(o)
        return o if math.isfinite(o) else None
    return o


def _fmt(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}"


def _plots(out_dir: str, law: str, params: Dict[str, Any], x_obs: np.ndarray, D: np.ndarray,
           L: np.ndarray, pred: np.ndarray, labels: Dict[str, str], k_flops: float,
           budget: Optional[float], alloc: Optional[Dict[str, Any]],
           rank: Optional[np.ndarray]) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # 1. observed vs predicted
    fig, ax = plt.subplots(figsize=(5.5, 5))
    sc = ax.scatter(pred, L, c=np.log10(x_obs), cmap="viridis", s=18, edgecolor="none")
    lo, hi = float(min(pred.min(), L.min())), float(max(pred.max(), L.max()))
    pad = 0.03 * (hi - lo + 1e-12)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="y = x")
    ax.set_xlabel(f"predicted {labels['loss']} (nats/token)")
    ax.set_ylabel(f"observed {labels['loss']} (nats/token)")
    ax.set_title(f"{law} law fit ({len(L)} runs)")
    fig.colorbar(sc, ax=ax, label=f"log10 {labels['x']} ({labels['x_unit']})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    p = os.path.join(out_dir, "fit_observed_vs_predicted.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written.append(p)

    # 2. isoFLOP curves (additive law only: the multiplicative law has no interior optimum)
    if law == "chinchilla" and params["alpha"] > 0 and params["beta"] > 0:
        if budget is not None:
            budgets = budget * np.logspace(-2, 2, 5)
        else:
            c_obs = k_flops * x_obs * D
            budgets = np.logspace(np.log10(c_obs.min()), np.log10(c_obs.max()), 5)
        fig, ax = plt.subplots(figsize=(6.5, 4.8))
        colors = plt.cm.plasma(np.linspace(0.05, 0.85, len(budgets)))
        for C, col in zip(budgets, colors):
            n_opt, d_opt = compute_optimal(params, C, k_flops)
            ns = n_opt * np.logspace(-2, 2, 200)
            ls = predict(params, ns, C / (k_flops * ns))
            ax.plot(ns, ls, color=col, lw=1.5, label=f"C = {C:.1e} FLOPs")
            ax.plot([n_opt], [predict(params, n_opt, d_opt)], "o", color=col, ms=6,
                    markeredgecolor="k")
        ax.set_xscale("log")
        ax.set_xlabel(f"model size N (parameters; column '{labels['x']}')")
        ax.set_ylabel(f"predicted {labels['loss']} (nats/token)")
        kind = "LoRA, C = 4ND" if k_flops == 4 else f"C = {k_flops:g}ND"
        ax.set_title(f"isoFLOP curves ({kind}); dots = compute-optimal N")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(out_dir, "fit_isoflop.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    # 3. loss vs rank, one line per model size
    if rank is not None and np.isfinite(rank).any():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ok = np.isfinite(rank)
        n_values = labels["n_values"]
        sizes = np.unique(n_values[ok])
        for s in sizes:
            m = ok & (n_values == s)
            rs = np.unique(rank[m])
            ys = [L[m & (rank == r)].mean() for r in rs]
            ax.plot(rs, ys, "o-", label=f"N = {s:.3g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"LoRA rank r ({labels['rank']})")
        ax.set_ylabel(f"mean observed {labels['loss']} (nats/token)")
        ax.set_title("loss vs LoRA rank (mean over tokens)")
        ax.legend(fontsize=8, loc="best", title=f"model size ({labels['n']}, parameters)")
        fig.tight_layout()
        p = os.path.join(out_dir, "fit_loss_vs_rank.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


def _build_parser() -> argparse.ArgumentParser:
    ap = CliParser(
        prog="python -m launch.fit",
        description="Fit a compute-optimal scaling law (Chinchilla or Zhang et al.) to a "
                    "results CSV and report the compute-optimal allocation.")
    ap.add_argument("csv", help="results CSV (one row per run)")
    ap.add_argument("--n-col", default="params", help="model-size column (default: params)")
    ap.add_argument("--d-col", default="tokens", help="training-tokens column (default: tokens)")
    ap.add_argument("--loss-col", default="eval_loss", help="loss column (default: eval_loss)")
    ap.add_argument("--law", choices=("chinchilla", "zhang"), default="chinchilla",
                    help="chinchilla: E + A/N^a + B/D^b (default); zhang: A X^-a D^-b + E")
    ap.add_argument("--x-col", default=None,
                    help="X column for --law zhang: e.g. params, rank, adapter_params "
                         "(default: the --n-col column)")
    ap.add_argument("--rank-col", default=None,
                    help="LoRA rank column (default: 'rank' if present)")
    ap.add_argument("--budget", type=validate.arg_float(0.0, None), default=None, metavar="C",
                    help="compute budget in FLOPs (e.g. 1e19): report the optimal N and D")
    ap.add_argument("--flops", choices=("full", "lora"), default="full",
                    help="FLOP model: full fine-tuning C=6ND (default) or LoRA C=4ND")
    ap.add_argument("--bootstrap", type=validate.arg_int(0, 100_000), default=200, metavar="N",
                    help="bootstrap resamples for 95%% intervals (default 200; 0 = none)")
    ap.add_argument("--seed", type=validate.arg_int(0, validate.SEED_MAX), default=0,
                    help="bootstrap seed (default 0)")
    ap.add_argument("--delta", type=validate.arg_float(0.0, None), default=DEFAULT_DELTA,
                    help="Huber delta on log-loss residuals (default 1e-3)")
    ap.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    ap.add_argument("--out", default=None,
                    help="output folder for fit.json and plots (default: the CSV's folder)")
    return ap


def _run(args: argparse.Namespace) -> Dict[str, Any]:
    t_start = time.perf_counter()
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise InputError(f"--budget must be a positive number of FLOPs, got {args.budget}")
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not (args.delta > 0):
        raise InputError(f"--delta must be > 0, got {args.delta}")
    header, rows = _read_csv(args.csv)
    law = args.law
    x_col = (args.x_col or args.n_col) if law == "zhang" else args.n_col
    cols = {("X, --x-col" if law == "zhang" else "model size N, --n-col"): x_col,
            "tokens D, --d-col": args.d_col, "loss, --loss-col": args.loss_col}
    vals, usable, n_dropped = _extract(header, rows, cols, args.csv)
    X, D, L = vals[x_col], vals[args.d_col], vals[args.loss_col]
    for role, c in cols.items():
        if c != args.loss_col and np.unique(vals[c]).size < 2:
            raise InputError(f"the law is not identifiable: column '{c}' ({role}) holds one value "
                             f"({_num(vals[c][0])}) in every usable row; the fit needs at least 2 distinct values")

    rank_col = args.rank_col if args.rank_col is not None else "rank"
    if args.rank_col is not None and rank_col not in header:
        raise InputError(f"column '{rank_col}' (rank, --rank-col) not found in {args.csv}; "
                         f"available columns: {', '.join(header)}")
    rank = None
    if rank_col in header:
        rank = np.array([_parse(r.get(rank_col, "")) for r in rows], float)[usable]
        bad = np.isfinite(rank) & ((rank < 1) | (rank != np.round(rank)))
        if bad.any():
            raise InputError(f"column '{rank_col}' (rank, --rank-col) holds {_num(rank[np.argmax(bad)])}; a LoRA "
                             f"rank is a positive integer")
    n_vals = None
    if args.n_col in header:
        n_vals = np.array([_parse(r.get(args.n_col, "")) for r in rows], float)[usable]

    fit = fit_chinchilla if law == "chinchilla" else fit_zhang
    params = fit(X, D, L, delta=args.delta)
    t_fit = time.perf_counter() - t_start
    k_flops = FLOPS_PER_TOKEN_PARAM[args.flops]

    boot = None
    if args.bootstrap > 0:
        boot = bootstrap(X, D, L, law=law, n_boot=args.bootstrap, seed=args.seed, start=params,
                         delta=args.delta,
                         budget=args.budget if law == "chinchilla" else None,
                         flops_per_token_param=k_flops)

    alloc: Optional[Dict[str, Any]] = None
    alloc_note = None
    if args.budget is not None:
        if law != "chinchilla":
            alloc_note = ("no compute-optimal allocation for the multiplicative Zhang law: on an "
                          "isoFLOP curve its loss is monotone in X (optimum at a boundary)")
        else:
            try:
                n_opt, d_opt = compute_optimal(params, args.budget, k_flops)
            except ValueError as exc:
                alloc_note = str(exc)
            else:
                alloc = {"budget_flops": args.budget, "flops": args.flops,
                         "flops_per_token_param": k_flops, "N_opt": n_opt, "D_opt": d_opt,
                         "tokens_per_param": d_opt / n_opt,
                         "loss_opt": float(predict(params, n_opt, d_opt)),
                         "exponent_N": params["beta"] / (params["alpha"] + params["beta"]),
                         "exponent_D": params["alpha"] / (params["alpha"] + params["beta"])}
                if boot is not None and "N_opt" in boot["intervals"]:
                    alloc["intervals"] = {"N_opt": boot["intervals"]["N_opt"],
                                          "D_opt": boot["intervals"]["D_opt"]}

    br = None
    if rank is not None and n_vals is not None and np.isfinite(rank).any():
        if alloc is not None:
            n_ref, ref_note = alloc["N_opt"], "N_opt"
        else:
            n_ref, ref_note = float(np.nanmax(n_vals)), "largest model size (no allocation)"
        br = best_rank(n_vals, rank, L, n_ref)
        if br is not None:
            br["reference"] = ref_note
            br["rank_col"] = rank_col

    pred = predict(params, X, D)
    residuals = [{"row": int(i) + 1, x_col: float(xv), args.d_col: float(dv),
                  "observed": float(lv), "predicted": float(pv), "residual": float(lv - pv),
                  "log_residual": float(math.log(lv) - math.log(pv))}
                 for i, xv, dv, lv, pv in zip(np.flatnonzero(usable), X, D, L, pred)]

    result: Dict[str, Any] = {
        "law": law,
        "E": params["E"], "A": params["A"], "B": params["B"],
        "alpha": params["alpha"], "beta": params["beta"],
        "formula": ("L = E + A/N^alpha + B/D^beta" if law == "chinchilla"
                    else "L = A * X^-alpha * D^-beta + E"),
        "columns": {"x" if law == "zhang" else "N": x_col, "D": args.d_col,
                    "loss": args.loss_col},
        "n_rows": int(len(L)), "n_rows_dropped": int(n_dropped),
        "huber_delta": args.delta, "objective": params["objective"],
        "optimizer": params["info"],
        "intervals": (None if boot is None else
                      {k: v for k, v in boot["intervals"].items() if k not in ("N_opt", "D_opt")}),
        "bootstrap": (None if boot is None else
                      {"n": boot["n_boot"], "seed": boot["seed"], "level": boot["level"]}),
        "allocation": alloc,
        "best_rank": br,
        "rmse_loss": float(np.sqrt(np.mean((L - pred) ** 2))),
        "fit_seconds": t_fit,
    }
    if alloc_note:
        result["allocation_note"] = alloc_note
    return {"result": result, "residuals": residuals, "X": X, "D": D, "L": L, "pred": pred,
            "rank": rank, "n_vals": n_vals, "params": params, "k_flops": k_flops,
            "x_col": x_col}


def _summary(res: Dict[str, Any], files: List[str]) -> str:
    r = res["result"]
    iv = r["intervals"] or {}
    lines = [f"{r['law']} law: {r['formula']}   ({r['n_rows']} rows"
             + (f", {r['n_rows_dropped']} dropped as empty/non-numeric" if r["n_rows_dropped"]
                else "") + f"; Huber delta={r['huber_delta']:g}; loss rmse={r['rmse_loss']:.4g})"]
    ci = f"  {int(100 * r['bootstrap']['level'])}% CI ({r['bootstrap']['n']} bootstrap)" \
        if r["bootstrap"] else ""
    lines.append(f"  {'param':<6} {'estimate':>12}{ci}")
    for k in ("E", "A", "B", "alpha", "beta"):
        if r[k] is None:
            continue
        s = f"  {k:<6} {_fmt(r[k]):>12}"
        if k in iv:
            s += f"   [{_fmt(iv[k][0])}, {_fmt(iv[k][1])}]"
        lines.append(s)
    a = r["allocation"]
    if a:
        kind = "LoRA, C ~= 4*N*D" if a["flops"] == "lora" else "full fine-tuning, C ~= 6*N*D"
        lines.append(f"compute-optimal allocation for C = {a['budget_flops']:.3g} FLOPs ({kind}):")
        s_n = f"  N_opt = {a['N_opt']:.4g} parameters"
        s_d = f"  D_opt = {a['D_opt']:.4g} tokens"
        if "intervals" in a:
            s_n += f"   [{_fmt(a['intervals']['N_opt'][0])}, {_fmt(a['intervals']['N_opt'][1])}]"
            s_d += f"   [{_fmt(a['intervals']['D_opt'][0])}, {_fmt(a['intervals']['D_opt'][1])}]"
        lines += [s_n, s_d,
                  f"  D/N = {a['tokens_per_param']:.3g} tokens per parameter; predicted loss "
                  f"{a['loss_opt']:.4g}; N_opt ~ C^{a['exponent_N']:.3f}, "
                  f"D_opt ~ C^{a['exponent_D']:.3f}"]
    elif "allocation_note" in r:
        lines.append(f"allocation: {r['allocation_note']}")
    b = r["best_rank"]
    if b:
        lines.append(f"best rank on the grid: r = {b['rank']} at model size {b['model_size']:.4g} "
                     f"(closest to {b['reference']}; mean {r['columns']['loss']} "
                     f"{b['mean_loss']:.4g} over {b['n_rows']} rows)")
    if files:
        lines.append("wrote: " + ", ".join(files))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = _build_parser()
    try:
        args = ap.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse already printed its message
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        res = _run(args)
        out_dir = args.out if args.out is not None else (os.path.dirname(
            os.path.abspath(args.csv)))
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output folder {out_dir}: {exc}") from None
    except InputError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2

    r = res["result"]
    labels = {"loss": args.loss_col, "x": res["x_col"],
              "x_unit": "rank" if res["x_col"] == (args.rank_col or "rank") else "parameters",
              "n": args.n_col, "rank": args.rank_col or "rank",
              "n_values": res["n_vals"] if res["n_vals"] is not None else res["X"]}
    pngs = _plots(out_dir, r["law"], res["params"], res["X"], res["D"], res["L"], res["pred"],
                  labels, res["k_flops"], args.budget, r["allocation"], res["rank"])
    fit_json = os.path.join(out_dir, "fit.json")
    full = dict(r)
    full["residuals"] = res["residuals"]
    with open(fit_json, "w") as fh:
        json.dump(_jsonable(full), fh, indent=2, allow_nan=False)
        fh.write("\n")
    files = [fit_json] + pngs
    if args.json:
        print(json.dumps(_jsonable(r), allow_nan=False))
    else:
        print(_summary(res, files))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
