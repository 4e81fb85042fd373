#!/usr/bin/env python3
"""Predicted vs measured wall time of tiny CPU cells (launch/timing.py on the `cpu` preset).

    .venv/bin/python benchmarks/bench_time.py            # 3 cells x 3 runs, ~4 min on one thread
    .venv/bin/python benchmarks/bench_time.py --calibrate

Each cell runs the kit's entrypoint (finetune/train.py) in its own process on one CPU thread
(OMP_NUM_THREADS=1, as the cpu preset's rate), each the fastest of --repeat runs. Measured: the
training phase of metrics.json (`phase_seconds.train`: the Trainer's loop with its evaluation before
and after training; not the imports, data and model set-up, which the time limit's fixed extra
minutes cover), by default in CPU seconds of the cell's process (`--clock cpu`: on one thread that
is the wall time the cell takes on an idle machine; shared cores make wall time swing by 2x, as in
benchmarks/throughput.py), or in wall seconds with `--clock wall`. Predicted: timing.estimate(...).hours for the same run config. The first cell
calibrates the cpu preset's rate (`peak_tflops` with mfu 1 in launch/gpus.yaml; `step_overhead_s` is
a fixed prior); the others check it: the ratio predicted/measured should lie within 0.75-1.25. With
--calibrate the script prints the rate that makes the first cell's ratio 1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftgrid.launch import timing  # noqa: E402

CELLS = [  # (label, run-config fields); the first one calibrates
    ("pythia-demo lora wordnet:small mb2 2 epochs (calibration)",
     dict(model="pythia-demo", method="lora", dataset="wordnet:small", micro_batch=2, seq_len=256, epochs=2)),
    ("pythia-tiny lora wordnet:medium mb4",
     dict(model="pythia-tiny", method="lora", dataset="wordnet:medium", micro_batch=4, seq_len=256)),
    ("pythia-tiny full dolly-sample:large unpacked mb4",
     dict(model="pythia-tiny", method="full", dataset="dolly-sample:large", micro_batch=4, seq_len=256,
          packing="none")),
]


# --clock cpu: the entrypoint's clock (time.time) reads this process's CPU time, so phase_seconds are CPU
# seconds: on one thread that is the wall time of an idle machine, whatever else shares the cores.
CPU_CLOCK = ("import runpy, sys, time; time.time = time.process_time; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_cell(run: dict, out: Path, clock: str) -> dict:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in run.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    shim = ["-c", CPU_CLOCK] if clock == "cpu" else []
    proc = subprocess.run([sys.executable, *shim, str(ROOT / "finetune" / "train.py"), *flags, f"--out={out}",
                           "--num-samples=0"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cell failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calibrate", action="store_true", help="print the cpu step overhead fitted on the first cell")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell, the fastest kept (shared cores are noisy)")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="cpu (default): the training phase in CPU seconds of the cell's process; wall: wall time "
                        "(swings with whatever else runs on shared cores)")
    args = p.parse_args(argv)
    rate = timing.preset_rate("cpu")
    print(f"cpu preset: {rate.flops / 1e9:.1f} GFLOP/s ({rate.source}), step overhead {rate.step_overhead_s:g} s")
    print(f"{'cell':58} {'steps':>5} {'pred steps':>10} {'measured s':>10} {'predicted s':>11} {'ratio':>6}"
          f"   (measured: {args.clock} clock)")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, run) in enumerate(CELLS):
            tries = [run_cell(run, Path(tmp) / f"cell{i}-{k}", args.clock) for k in range(args.repeat)]
            metrics = min(tries, key=lambda m: m["phase_seconds"]["train"])
            est = timing.estimate(run, gpu="cpu")
            measured = metrics["phase_seconds"]["train"]
            predicted = est.hours * 3600
            print(f"{label:58} {metrics['steps']:>5} {est.steps:>10} {measured:>10.2f} {predicted:>11.2f} "
                  f"{predicted / measured:>6.2f}", flush=True)
            if i == 0 and args.calibrate:
                overhead = est.steps * rate.step_overhead_s
                fitted = rate.flops * (predicted - overhead) / (measured - overhead)
                print(f"  calibration: peak_tflops {fitted / 1e12:.4f} (mfu 1) makes this cell's ratio 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
