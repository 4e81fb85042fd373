"""Benchmark (not a test): expand, plan and render a ~10,000-cell grid; the cost of each stage.

    python benchmarks/bench_grid.py [--write] [--cli] [--against OTHER_CHECKOUT] [--repeat 3]

Stages, timed in this process: expand (spec -> cells, every run config validated), plan (memory per
cell, --zero auto), render (every cell's files as text in memory, nothing written), and with --write
the sweep written to a temporary folder the way `launch/grid.py` writes it (render included), then
written again over itself (a resumed sweep: unchanged files are left alone). With --cli, the same grid
end to end as a user runs it: `python launch/grid.py <flags> --dry-run --out <new folder>` in a
subprocess (start-up, imports, dataset checks, writing, the printed plan), then again over its own
output (a re-run); --against DIR also runs DIR/launch/grid.py (another checkout, e.g. an older commit
from `git worktree add`) the same way, alternating, and prints this checkout's time as a ratio to it.
Each stage is also given as a ratio to expand, measured in the same process, so figures from different
machines compare. Also printed: how many `sbatch` calls submitting the grid would make.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftgrid.launch import grid, render, submit  # noqa: E402
from ftgrid.launch.spec import Resources, SweepSpec, expand  # noqa: E402

# 5 models x (3 LoRA methods x 7 ranks + full) x 5 lrs x 4 datasets x 5 seeds = 11,000 cells.
SPEC = dict(models=["pythia-410m", "pythia-1.4b", "mistral-7b", "llama-2-13b", "mixtral-8x7b"],
            methods=["full", "lora", "qlora", "lora-8bit"], ranks=[2, 4, 8, 16, 32, 64, 128],
            lrs=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3], datasets=["alpaca:small", "alpaca:medium", "wordnet:small",
                                                         "wordnet:medium"], seeds=[0, 1, 2, 3, 4],
            train={"seq_len": 2048, "micro_batch": 4},
            resources=Resources(gpu="h100-80gb", gpus_per_node=8, zero="auto", partition="gpu", time="12:00:00",
                                setup=("module load cuda/12.4",)))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cli_flags(spec: SweepSpec) -> list[str]:
    """SPEC as `launch/grid.py` flags: the CLI stages make the same cells as the in-process ones."""
    res = spec.resources
    flags = [f"--{axis}={','.join(str(v) for v in getattr(spec, axis))}"
             for axis in ("models", "methods", "ranks", "lrs", "datasets", "seeds")]
    flags += [f"--{key.replace('_', '-')}={value}" for key, value in spec.train.items()]
    flags += [f"--gpu={res.gpu}", f"--gpus-per-node={res.gpus_per_node}", f"--zero={res.zero}",
              f"--partition={res.partition}", f"--time={res.time}", *(f"--setup={line}" for line in res.setup)]
    return flags + ["--dry-run", "--executor=local"]


def run_cli(checkout: Path, flags: list[str], out: Path) -> float:
    """Seconds for one `python launch/grid.py` run of `checkout`, from process start to exit."""
    cmd = [sys.executable, str(checkout / "launch" / "grid.py"), *flags, f"--out={out}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:2])} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="also write the sweep to a temporary folder")
    p.add_argument("--cli", action="store_true", help="also time `launch/grid.py` end to end in a subprocess")
    p.add_argument("--against", type=Path, metavar="CHECKOUT",
                   help="with --cli: also time CHECKOUT/launch/grid.py the same way and print the ratio")
    p.add_argument("--repeat", type=int, default=1, help="best of N runs per stage")
    args = p.parse_args(argv)
    if args.against and not args.cli:
        p.error("--against needs --cli")
    spec = SweepSpec(name="bench", **SPEC)
    best = {}

    def stage(name, fn):
        results = [timed(fn) for _ in range(args.repeat)]
        best[name] = min(t for _, t in results)
        return results[0][0]

    cells = stage("expand", lambda: expand(spec))
    plans = stage("plan", lambda: grid.plan_cells(cells, spec.resources))
    ctx = render.Context(sweep=spec.name, python=sys.executable)
    root = Path("/runs/bench")
    stage("render", lambda: [render.cell_files(c, p, root / c.id, ctx) for c, p in zip(cells, plans)])
    if args.write:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = iter(range(args.repeat))  # a new folder each time: a re-write of unchanged files is cheaper
            stage("write", lambda: grid.write_sweep(Path(tmp) / f"sweep{next(fresh)}", spec, cells, plans, ctx))
            stage("rewrite (resume)", lambda: grid.write_sweep(Path(tmp) / "sweep0", spec, cells, plans, ctx))
    if args.cli:
        checkouts = {"cli": Path(__file__).resolve().parent.parent}
        if args.against:
            checkouts["cli (--against)"] = args.against.resolve()
        runs = {name: [] for name in checkouts}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeat):  # alternating, so a change in the machine's load hits both alike
                for k, (name, checkout) in enumerate(checkouts.items()):
                    out = Path(tmp) / f"{k}-{i}"
                    fresh = run_cli(checkout, cli_flags(spec), out)
                    runs[name].append((fresh, run_cli(checkout, cli_flags(spec), out)))  # then a re-run over it
        for name, times in runs.items():
            best[name] = min(fresh for fresh, _ in times)
            best[f"{name} re-run"] = min(again for _, again in times)
    fits = sum(p.fits for p in plans)
    arrays = submit.chunks([c.id for c, p in zip(cells, plans) if p.fits], submit.max_array_size())
    base = best["expand"]
    print(f"{len(cells)} cells ({fits} fit, {len(cells) - fits} predicted OOM), best of {args.repeat}")
    print(f"{'stage':22} {'seconds':>8} {'x expand':>9} {'us/cell':>8}")
    total = best["expand"] + best["plan"] + best["render"]
    for name, seconds in [*best.items(), ("expand+plan+render", total)]:
        print(f"{name:22} {seconds:8.2f} {seconds / base:9.2f} {seconds / len(cells) * 1e6:8.0f}")
    if args.against:
        print(f"cli / cli (--against): {best['cli'] / best['cli (--against)']:.2f} fresh, "
              f"{best['cli re-run'] / best['cli (--against) re-run']:.2f} re-run ({args.against})")
    print(f"submission: {len(arrays)} sbatch call(s) (job arrays of at most {submit.max_array_size()} cells) "
          f"for {fits} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
