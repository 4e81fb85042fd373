"""Pretrain `pythia-demo`, the small base that `make demo` fine-tunes, with the kit's own entrypoint.

    python scripts/pretrain_demo_base.py            # a few minutes on 2 CPU cores; rewrites the shipped weights
    python scripts/pretrain_demo_base.py --check    # pretrain into a temporary folder, compare, write nothing

A Pythia-shaped model (gpt_neox, 3 layers, hidden 128, ~0.86M parameters, the project's 1,024-token
tokenizer; registry entry `pythia-demo`) trained from random init (`finetune/train.py --method full
--init random`, fixed seed) on the documentation that ships with CPython (`ftgrid.data_prep.python_docs`):
general English prose, not the WordNet instructions the demo then fine-tunes on. The weights
(config.json, model.safetensors, fp32) and a record of the run (pretrain.json: command, losses) land in
finetune/assets/pythia-demo, which the registry entry points at and the wheel ships.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the kit importable without installing
from ftgrid.data_prep.python_docs import write_passages  # noqa: E402

MODEL = "pythia-demo"
ASSET = ROOT / "finetune" / "assets" / "pythia-demo"
SHIPPED = ("config.json", "generation_config.json", "model.safetensors")
# The run's settings (every key is a finetune/train.py flag): 400 steps of 8 passages, about 0.75 of the corpus.
SETTINGS = {"method": "full", "init": "random", "seed": 0, "max-steps": 400, "micro-batch": 8,
            "seq-len": 128, "lr": 3e-3, "warmup": 0.05, "eval-rows": 100, "num-samples": 0,
            "logging-steps": 50}


def pretrain(work: Path) -> tuple[Path, dict, list[str]]:
    corpus = work / "python_docs.jsonl"
    rows = write_passages(corpus)
    print(f"pretraining corpus: {rows} passages of the Python documentation", flush=True)
    cmd = ["finetune/train.py", "--model", MODEL, "--dataset", str(corpus), "--out", str(work / "run"),
           *(x for key, value in SETTINGS.items() for x in (f"--{key}", str(value)))]
    print("$ python " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    return work / "run" / "model", metrics, cmd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="pretrain in a temporary folder; write nothing")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pythia-demo-") as tmp:
        saved, metrics, cmd = pretrain(Path(tmp))
        record = {"command": "python " + " ".join(c if not c.startswith(tmp) else "<corpus>" if c.endswith(".jsonl")
                                                 else "<out>" for c in cmd),
                  "corpus": "ftgrid.data_prep.python_docs.write_passages (CPython's documentation)",
                  "steps": metrics["steps"], "tokens": metrics["tokens"],
                  "initial_eval_loss": round(metrics["initial_eval_loss"], 4),
                  "eval_loss": round(metrics["eval_loss"], 4),
                  "train_loss_last": round(metrics["train_loss_last"], 4),
                  "total_params": metrics["total_params"]}
        print(json.dumps(record, indent=1))
        if args.check:
            shipped = json.loads((ASSET / "pretrain.json").read_text())
            print(f"shipped eval loss {shipped['eval_loss']}, this run {record['eval_loss']}")
            return 0
        ASSET.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            shutil.copyfile(saved / name, ASSET / name)
        (ASSET / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {ASSET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
