"""The long mode of the fuzz suite (not a test): every property of tests/fuzz with many more examples.

    python benchmarks/fuzz_long.py [--examples 1500] [--random]

Runs `pytest tests/fuzz` with FTGRID_FUZZ_EXAMPLES per property (12 properties: 1,500 each is 18,000
examples) and prints how many examples each command and outcome got (exit 0, exit 2, or "accepted": the
input passed validation where the command would start training, probing, fitting or tokenizing).
--random draws fresh examples (the default is hypothesis' derandomized, repeatable sequence).
A failing property prints hypothesis' smallest failing example and `@reproduce_failure` blob.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=1500, help="examples per property (default 1500)")
    p.add_argument("--random", action="store_true", help="fresh random examples instead of the repeatable ones")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "tally.json"
        env = dict(os.environ, FTGRID_FUZZ_EXAMPLES=str(args.examples), FTGRID_FUZZ_REPORT=str(report))
        if args.random:
            env["FTGRID_FUZZ_RANDOM"] = "1"
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz"],
                              cwd=ROOT, env=env)
        took = time.time() - started
        tally = json.loads(report.read_text()) if report.exists() else {}
    by_command: Counter = Counter()
    for key, count in tally.items():
        by_command[key.split(" ")[0]] += count
    print(f"\n{sum(tally.values())} examples in {took:.0f} s; pytest exit {proc.returncode}")
    for command in sorted(by_command):
        outcomes = ", ".join(f"{k.split(' ')[1]}: {v}" for k, v in sorted(tally.items()) if k.split(" ")[0] == command)
        print(f"  {command:20} {by_command[command]:6}  ({outcomes})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
