"""The bad-input table: each bad value, given to `launch/grid.py` or `finetune/train.py`, gets one `error:`
line naming it, exit code 2, nothing written (the output folder never appears) and nothing submitted.
Cases already in test_grid_cli.py / test_config.py are not repeated here."""
from __future__ import annotations

import sys

import pytest
import yaml

from cells import ROOT, explain, run

GRID = ROOT / "launch" / "grid.py"
TRAIN = ROOT / "finetune" / "train.py"
TINY = ["--models", "pythia-tiny"]


def files(tmp_path):
    """Inputs some cases point at: a bad-column dataset, a plain file as output dir, bad YAML, hostfiles."""
    (tmp_path / "cols.jsonl").write_text('{"foo": "a", "bar": "b"}\n' * 8)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "bad.yaml").write_text("models: [pythia-tiny\n")
    (tmp_path / "list.yaml").write_text("- pythia-tiny\n")
    (tmp_path / "hosts-bad").write_text("node1 slots=x\n")
    (tmp_path / "hosts-dup").write_text("node1 slots=2\nnode1 slots=2\n")
    (tmp_path / "hosts-empty").write_text("# nobody\n")
    (tmp_path / "cell-unknown.yaml").write_text(yaml.safe_dump({"model": "pythia-tiny", "lerning_rate": 1e-3}))
    (tmp_path / "cell-bad.yaml").write_text("model: [pythia-tiny\n")
    (tmp_path / "cell-list.yaml").write_text("- 1\n- 2\n")
    return tmp_path


# (argv, text the one error line must contain); T = the test's tmp folder
GRID_CASES = [
    (TINY + ["--methods", "lorra"], "'lorra'"),
    pytest.param(TINY + ["--datasets", "wordnett:small"], "wordnett"),
    pytest.param(TINY + ["--datasets", "wordnet:hugee"], "hugee"),
    (TINY + ["--alphas", "0"], "alpha must be positive, got 0"),
    (TINY + ["--alphas", "-16"], "alpha must be positive, got -16"),
    (TINY + ["--alphas", "big"], "'big'"),
    (TINY + ["--lrs", "0"], "lr must be positive, got 0"),
    (TINY + ["--lrs=-1e-4"], "lr must be positive, got -0.0001"),
    (TINY + ["--lrs", "fast"], "lr: 'fast' is not a valid float"),
    (TINY + ["--seeds", "one"], "'one'"),
    (TINY + ["--zero", "-1"], "'-1'"),
    (TINY + ["--zero", "zero3"], "'zero3'"),
    (TINY + ["--offload", "nvme"], "'nvme'"),
    (TINY + ["--zero", "5"], "'5'"),
    (TINY + ["--seq-len", "999999"], "seq_len 999999 exceeds pythia-tiny's limit"),
    (TINY + ["--seq-len", "0"], "seq_len must be positive, got 0"),
    (TINY + ["--micro-batch", "0"], "micro_batch must be positive, got 0"),
    (TINY + ["--grad-accum", "0"], "grad_accum must be positive, got 0"),
    (TINY + ["--warmup", "1.5"], "1.5"),
    (TINY + ["--schedule", "cosin"], "'cosin'"),
    (TINY + ["--optimizer", "adam"], "'adam'"),
    (TINY + ["--precision", "fp8"], "'fp8'"),
    (TINY + ["--wandb-mode", "onlin"], "'onlin'"),
    (TINY + ["--weight-decay", "-1"], "weight_decay must be >= 0, got -1"),
    (TINY + ["--min-lr", "1", "--lrs", "1e-3"], "min_lr"),
    (TINY + ["--epochs", "0"], "epochs > 0"),
    (TINY + ["--nodes", "0"], "nodes"),
    pytest.param(TINY + ["--gpu", "h100-80gb", "--gpus-per-node", "0"], "gpus_per_node"),
    (TINY + ["--cpus-per-task", "zero"], "'zero'"),
    pytest.param(TINY + ["--mem", "12X"], "12X"),
    pytest.param(TINY + ["--mem", "lots"], "lots"),
    pytest.param(TINY + ["--time", "soon"], "soon"),
    pytest.param(TINY + ["--time", "1:99:99:99"], "1:99:99:99"),
    (TINY + ["--set", "save_every=-5"], "save_every must be >= 0 steps (0 = only on preemption), got -5"),
    pytest.param(TINY + ["--datasets", "T/missing.jsonl"], "missing.jsonl"),
    pytest.param(TINY + ["--datasets", "T/cols.jsonl"], "cols.jsonl"),
    (TINY + ["--out", "T/afile"], "afile"),
    (["--config", "T/bad.yaml"], "bad.yaml"),
    (["--config", "T/list.yaml"], "list.yaml"),
    (["--config", "T/nowhere.yaml"], "nowhere.yaml"),
    (TINY + ["--hostfile", "T/hosts-bad"], "slots=x"),
    (TINY + ["--hostfile", "T/hosts-empty"], "hosts-empty"),
    (TINY + ["--hostfile", "T/nohosts"], "nohosts"),
]

TRAIN_CASES = [
    (["--model", "gpt5"], "'gpt5'"),
    (["--model", "pythia-tiny", "--method", "lorra"], "'lorra'"),
    (["--model", "pythia-tiny", "--task", "sfft"], "'sfft'"),
    (["--model", "pythia-tiny", "--rank", "0"], "rank must be a positive integer, got 0"),
    (["--model", "pythia-tiny", "--alpha", "-2"], "alpha must be positive, got -2"),
    (["--model", "pythia-tiny", "--lr", "abc"], "lr: 'abc' is not a valid float"),
    (["--model", "pythia-tiny", "--method", "full", "--rank", "8"], "method 'full' takes no LoRA rank"),
    (["--model", "pythia-tiny", "--seq-len", "999999"], "seq_len 999999"),
    (["--model", "pythia-tiny", "--micro-batch", "0"], "micro_batch must be positive, got 0"),
    (["--model", "pythia-tiny", "--save-every", "-1"], "save_every must be >= 0 steps (0 = only on preemption), got -1"),
    (["--model", "pythia-tiny", "--dataset", "T/missing.jsonl"], "missing.jsonl"),
    (["--model", "pythia-tiny", "--dataset", "T/"], "T/"),
    (["--model", "pythia-tiny", "--dataset", "T/cols.jsonl"], "cols.jsonl"),
    (["--model", "pythia-tiny", "--task", "dpo", "--dataset", "wordnet:small"], "wordnet"),
    (["--model", "pythia-tiny", "--deepspeed", "T/nods.json"], "nods.json"),
    (["--cell", "T/cell-unknown.yaml"], "'lerning_rate'"),
    (["--cell", "T/cell-bad.yaml"], "cell-bad.yaml"),
    (["--cell", "T/cell-list.yaml"], "cell-list.yaml"),
    (["--cell", "T/nocell.yaml"], "nocell.yaml"),
    (["--model", "pythia-tiny", "--out", "T/afile"], "afile"),
]


def _id(case) -> str:
    argv = case.values[0] if type(case).__name__ == "ParameterSet" else case[0]
    return " ".join(argv[2:] or argv)


def _argv(argv, tmp_path):
    return [str(a).replace("T/", f"{tmp_path}/") for a in argv]


def _one_error_line(proc, expected, tmp_path):
    assert proc.returncode == 2, explain(proc)
    # one error line (a library may warn on stderr before a dataset is found bad while loading)
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and proc.stderr.strip().splitlines()[-1] == lines[0], proc.stderr
    assert expected.replace("T/", f"{tmp_path}/") in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("argv, expected", GRID_CASES, ids=[_id(c) for c in GRID_CASES])
def test_grid_bad_input(tmp_path, argv, expected):
    files(tmp_path)
    out = tmp_path / "never"
    argv = _argv(argv, tmp_path)
    if "--out" not in argv:
        argv += ["--out", str(out)]
    # --executor local without --dry-run: a case that slipped through would start training.
    if "--hostfile" not in argv:
        argv += ["--executor", "local"]
    proc = run([sys.executable, GRID, *argv, "--gpu", "cpu"] if "--gpu" not in argv else
               [sys.executable, GRID, *argv], timeout=120)
    _one_error_line(proc, expected, tmp_path)
    assert not out.exists()
    assert (tmp_path / "afile").read_text() == "not a folder\n"


@pytest.mark.parametrize("argv, expected", TRAIN_CASES, ids=[" ".join(a) for a, _ in TRAIN_CASES])
def test_train_bad_input(tmp_path, argv, expected):
    files(tmp_path)
    out = tmp_path / "never"
    argv = _argv(argv, tmp_path)
    if "--out" not in argv and "--cell" not in argv:
        argv += ["--out", str(out)]
    proc = run([sys.executable, TRAIN, *argv], timeout=120)
    _one_error_line(proc, expected, tmp_path)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("status", "resolved", "runs"))) == []


def test_the_table_has_at_least_40_passing_cases():
    xfails = sum(1 for c in GRID_CASES if getattr(c, "marks", ()))
    assert len(GRID_CASES) - xfails + len(TRAIN_CASES) >= 40
