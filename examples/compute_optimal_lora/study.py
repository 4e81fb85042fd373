"""Compute-optimal LoRA at CPU scale, run with the kit end to end as a user would.

    python examples/compute_optimal_lora/study.py                 # the full study (< 1 h on 2 CPU cores)
    python examples/compute_optimal_lora/study.py --smoke         # about three minutes: `make study-smoke`

1. Pretrain: three Pythia-shaped base models (registry entries pythia-study-{xs,s,m}) are trained
   from scratch on real text available offline: the documentation that ships with CPython (the
   `pydoc_data.topics` pages and the standard library's docstrings, PSF licence; ~4,500 passages of
   64 words, so 600 steps of 8 see each passage about once). One `launch/grid.py` sweep, method full.
2. Fine-tune: a grid of LoRA cells (base size × rank × data tier) on a different, real
   instruction-style dataset: the shipped WordNet instructions (`wordnet:small|medium|large`),
   each cell starting from its base's weights. One `launch/grid.py` sweep per base.
3. Report and fit: `python -m launch.report` on each sweep, the rows joined into one table,
   `python -m launch.fit` with N = base-model parameters, D = fine-tuning tokens, and the
   Zhang et al. law over the adapter rank and over the base size.
Everything lands in --out (default examples/compute_optimal_lora/results): the tables, the
fits (fit.json) and the plots; WRITEUP.md next to this script discusses them.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the kit importable without installing
from ftgrid.data_prep.python_docs import write_passages  # noqa: E402

BASES = ("pythia-study-xs", "pythia-study-s", "pythia-study-m")

FULL = dict(bases=BASES, pretrain_steps=600, ranks=(2, 8, 32), tiers=("small", "medium", "large"),
            epochs=1, bootstrap=200, pretrain_sets=("eval_rows=200",), lora_sets=())
# The smoke run (`make study-smoke`) keeps every step of the study at the smallest size that still fits a law:
# two bases, two ranks, two data sizes given as row counts (a tier may be a count).
# Its cells evaluate on fewer rows and write no samples: evaluation and generation cost more than its training.
SMOKE = dict(bases=BASES[:2], pretrain_steps=40, ranks=(2, 8), tiers=("100", "300"), epochs=1,
             bootstrap=20, pretrain_sets=("eval_rows=64", "num_samples=0"),
             lora_sets=("eval_rows=64", "num_samples=0"))


def sh(*cmd, **kw) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, **kw)


def grid(*args) -> None:
    sh(sys.executable, ROOT / "launch" / "grid.py", "--executor", "local", "--gpu", "cpu", *args)


def sets(pairs) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def cell_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/cell.yaml"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few minutes instead of an hour")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    out = args.out.resolve()
    t0 = time.time()

    corpus = out / "data" / "python_docs.jsonl"
    print(f"pretraining corpus: {write_passages(corpus)} passages of the Python documentation")
    base_sweep = out / "pretrain"
    grid("--name", "pretrain", "--out", base_sweep, "--models", ",".join(plan["bases"]), "--methods", "full",
         "--lrs", "2e-3", "--datasets", f"{corpus}", "--max-steps", str(plan["pretrain_steps"]),
         "--micro-batch", "8", "--seq-len", "128", "--set", "warmup=0.05", *sets(plan["pretrain_sets"]))
    weights = {json.loads((d / "metrics.json").read_text())["model"]: d / "model" for d in cell_dirs(base_sweep)}

    tables = []
    for base in plan["bases"]:
        sweep = out / f"lora-{base}"
        grid("--name", f"lora-{base}", "--out", sweep, "--models", base,
             "--ranks", ",".join(map(str, plan["ranks"])), "--alphas", "2r", "--lrs", "2e-3",
             "--datasets", ",".join(f"wordnet:{t}" for t in plan["tiers"]), "--epochs", str(plan["epochs"]),
             "--micro-batch", "16", "--seq-len", "96", "--set", f"weights={weights[base]}", *sets(plan["lora_sets"]))
        sh(sys.executable, "-m", "launch.report", sweep)
        tables.append(sweep / "results.csv")

    joined = out / "results.csv"
    rows = [r for t in tables for r in csv.DictReader(t.open())]
    with joined.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fit_args = ["--n-col", "params", "--d-col", "tokens", "--loss-col", "eval_loss",
                "--bootstrap", str(plan["bootstrap"])]
    sh(sys.executable, "-m", "launch.fit", joined, *fit_args, "--flops", "lora", "--budget", "1e13",
       "--out", out / "fit_chinchilla")
    for x_col in ("rank", "params"):  # Zhang et al.'s multiplicative law over the adapter rank, then base size
        sh(sys.executable, "-m", "launch.fit", joined, *fit_args, "--law", "zhang", "--x-col", x_col,
           "--out", out / f"fit_zhang_{'rank' if x_col == 'rank' else 'size'}")
    print(f"study done in {time.time() - t0:.0f}s: {joined}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
