"""The bad-input table: each bad value, given to `launch/grid.py` or `finetune/train.py`, gets one `error:`
line naming it, exit code 2, nothing written (the output folder never appears) and nothing submitted.
Cases already in test_grid_cli.py / test_config.py are not repeated here."""
from __future__ import annotations

import os
import subprocess
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
    good = '{"instruction": "a", "input": "", "output": "b"}\n'
    (tmp_path / "broken.jsonl").write_text(good * 10 + '{"instruction": "a", "inp\n' + good * 10)  # cut mid-file
    (tmp_path / ("b" * 200 + ".jsonl")).write_text(good * 3 + "[1, 2]\n")
    (tmp_path / "one.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')  # nothing left to train on
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "a", "completion": "b"}\n{"prompt": "café", "completion": '
                                            '"b"}\n'.encode("latin-1") * 5)  # Arrow reads it; rows fail later
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
    pytest.param(TINY + ["--datasets", "T/empty.jsonl"], "dataset empty: empty.jsonl is empty"),
    pytest.param(TINY + ["--datasets", "T/one.jsonl"], "one.jsonl has 1 usable rows, too few for 1 eval rows"),
    pytest.param(TINY + ["--datasets", "T/latin1.jsonl"], "latin1.jsonl line 2: not UTF-8 text (invalid continuation"),
    pytest.param(TINY + ["--datasets", "T/broken.jsonl"], "broken.jsonl line 11: not valid JSON ("),
    pytest.param(TINY + ["--datasets", "T/" + "b" * 200 + ".jsonl"], "bbb.jsonl line 4: a JSON list, not an object"),
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
    (["--model", "pythia-tiny", "--dataset", "T/empty.jsonl"], "empty.jsonl is empty"),
    (["--model", "pythia-tiny", "--dataset", "T/broken.jsonl"], "broken.jsonl line 11: not valid JSON ("),
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
               [sys.executable, GRID, *argv])
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
    proc = run([sys.executable, TRAIN, *argv])
    _one_error_line(proc, expected, tmp_path)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("status", "resolved", "runs"))) == []


def test_the_table_has_at_least_40_passing_cases():
    xfails = sum(1 for c in GRID_CASES if getattr(c, "marks", ()))
    assert len(GRID_CASES) - xfails + len(TRAIN_CASES) >= 40


# ---------------------------------------------------------------------------------------------
# Hostile input, by class (issue: every command keeps its promise under any input). In-process: each
# command's main(argv) with the output captured, so the table stays fast as it grows.

BIG = str(2**64)
MODULES = {"grid": "ftgrid.launch.grid", "train": "ftgrid.finetune.train", "plan": "ftgrid.launch.plan",
           "probe": "ftgrid.launch.probe", "fit": "ftgrid.launch.fit", "report": "ftgrid.launch.report",
           "data": "ftgrid.data_prep.__main__", "lm_eval": "ftgrid.finetune.lm_eval_hook"}
# A few hundred bytes that expand to 9**8 nodes when aliases are followed.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def hostile_files(tmp_path):
    files(tmp_path)
    sweeps = {"train-list": {"train": [1, 2]}, "zip-ints": {"zip": [1, 2]}, "sbatch-null": {"sbatch": [None]},
              "setup-dict": {"setup": [{"a": "b"}]}, "container-list": {"container": {"image": ["a", "b"]}},
              "resources-list": {"resources": [1]}, "models-map": {"models": {"a": 1}},
              "big": {"models": ["pythia-tiny"], "ranks": list(range(1, 60)), "lrs": [1e-4 * i for i in range(1, 60)],
                      "seeds": list(range(60))}}
    for name, data in sweeps.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    (tmp_path / "cell-bomb.yaml").write_text(ALIAS_BOMB)
    (tmp_path / "same.csv").write_text("params,tokens,eval_loss\n" + "1e6,1e6,2.0\n" * 8)
    (tmp_path / "neg-rank.csv").write_text("params,tokens,eval_loss,rank\n" + "".join(
        f"{i}e6,{i}e5,{2 + 1 / i},-4\n" for i in range(1, 9)))
    (tmp_path / "bytes.csv").write_bytes(b"params,tokens,eval_loss\n\xff\xfe,1,2\n")
    (tmp_path / "peaks-text.csv").write_text("model,method,rank,micro_batch,seq_len,peak_gib\n"
                                             "pythia-tiny,lora,eight,1,64,0.5\n")
    (tmp_path / "peaks-bytes.csv").write_bytes(b"model,method\npythia-tiny,\xff\n")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.yaml").write_text("name: s\n")
    return tmp_path


# --dry-run: a case that slipped through writes files (and fails the test), it never trains
TINY_GRID = ["--models", "pythia-tiny", "--gpu", "cpu", "--executor", "local", "--dry-run", "--out", "T/never"]
CLASS_CASES = [
    # 1. numbers: non-finite floats, overflowing and out-of-range integers, model-dependent limits
    *[("grid", TINY_GRID + [flag, value], text) for flag, value, text in [
        ("--lrs", "nan", "lr must be a finite number"), ("--lrs", "inf", "lr must be a finite number"),
        ("--lrs", "1e400", "lr must be a finite number"), ("--alphas", "1e400", "alpha must be a finite"),
        ("--alphas", "nan", "alpha"), ("--epochs", "nan", "epochs must be a finite"),
        ("--weight-decay", "inf", "weight_decay must be a finite"), ("--warmup", "nan", "warmup"),
        ("--min-lr", "inf", "min_lr must be a finite"), ("--set", "max_grad_norm=nan", "max_grad_norm"),
        ("--set", "dpo_beta=inf", "dpo_beta"), ("--set", "neftune_alpha=1e400", "neftune_alpha"),
        ("--seeds", "-1", "seed must be an integer in [0, 4294967295], got -1"),
        ("--seeds", str(2**32), "seed must be an integer in [0, 4294967295]"), ("--seeds", BIG, BIG),
        ("--ranks", BIG, "rank must be an integer"), ("--nodes", BIG, "nodes must be an integer in [1, 10000]"),
        ("--micro-batch", BIG, "micro_batch must be an integer"), ("--grad-accum", BIG, "grad_accum"),
        ("--cpus-per-task", "100000", "cpus_per_task"), ("--set", "dataloader_workers=100000", "dataloader_workers"),
        ("--ranks", "128", "rank 128 exceeds pythia-tiny's hidden size 64"), ("--set", "lora_dropout=5", "lora_dropout"),
        ("--max-parallel", "-1", "--max-parallel"), ("--max-parallel", BIG, "--max-parallel"),
        ("--datasets", "wordnet:99999", "asks for 99999 training rows"),
        ("--datasets", "wordnet:0.00001", "selects 0 of the"),
        ("--global-batch", BIG, "grad_accum")]],
    ("plan", ["--model", "pythia-1.4b", "--gpus-per-node", "0"], "--gpus-per-node"),
    ("plan", ["--model", "pythia-1.4b", "--gpus-per-node", "-1"], "--gpus-per-node"),
    ("plan", ["--model", "pythia-1.4b", "--gpus", "3", "--gpus-per-node", "2"], "not a multiple of --gpus-per-node"),
    ("plan", ["--model", "pythia-1.4b", "--micro-batch", BIG], "micro_batch must be an integer"),
    ("plan", ["--model", "pythia-1.4b", "--rank", "4096"], "exceeds pythia-1.4b's hidden size 2048"),
    ("plan", ["--model", "pythia-1.4b", "--lora-dropout", "nan"], "lora_dropout must be a finite"),
    ("data", ["--dataset", "wordnet:0.0001", "--no-cache"], "selects 0 of the"),
    ("data", ["--dataset", "wordnet:small", "--eval-rows", "100000", "--no-cache"], "too few for 100000 eval rows"),
    ("data", ["--dataset", "x" * 300], "holds a name longer than a filesystem takes"),
    ("grid", TINY_GRID + ["--datasets", "x" * 300], "holds a name longer than a filesystem takes"),
    # 2. a trailing newline is not a valid value
    *[("grid", TINY_GRID + [flag, value], text) for flag, value, text in [
        ("--name", "swp\n", "sweep name 'swp\\n'"), ("--partition", "gpu\n", "partition 'gpu\\n'"),
        ("--time", "01:00:00\n", "time '01:00:00\\n'"), ("--mem", "4G\n", "mem '4G\\n'"),
        ("--account", "acct\n", "account 'acct\\n'"), ("--qos", "high\n", "qos 'high\\n'"),
        ("--constraint", "a100\n", "constraint 'a100\\n'"), ("--sbatch=--mail-type=END\n", "--gpu=cpu", "sbatch line")]],
    ("data", ["--dataset", "wordnet@train\n", "--no-cache"], "bad split 'train\\n'"),
    ("probe", ["--model", "pythia-tiny", "--gpu", "cpu", "--executor", "slurm", "--partition", "gpu\n",
               "--out", "T/never"], "--partition 'gpu\\n'"),
    # 3. YAML shapes, alias bombs, the cell cap
    *[("grid", ["--config", f"T/{name}.yaml", "--gpu", "cpu", "--executor", "local", "--out", "T/never"], text)
      for name, text in [("train-list", "train in"), ("zip-ints", "zip in"), ("sbatch-null", "sbatch in"),
                         ("setup-dict", "setup in"), ("container-list", "container in"),
                         ("resources-list", "resources in"), ("models-map", "models in"),
                         ("bomb", "anchors and aliases"), ("big", "more than the cap of 100000")]],
    ("grid", TINY_GRID + ["--ranks", "1,2,4", "--max-cells", "2"], "the grid has 3 cells"),
    ("train", ["--cell", "T/cell-bomb.yaml"], "anchors and aliases"),
    # 4. output paths: under a file, virtual, names too long; the interpreter that would run the jobs
    ("grid", ["--models", "pythia-tiny", "--gpu", "cpu", "--executor", "local", "--out", "T/afile/sub"],
     "is under a file"),
    ("grid", ["--models", "pythia-tiny", "--gpu", "cpu", "--executor", "local", "--out", "/proc/ftgrid-never"],
     "virtual filesystem"),
    ("grid", ["--models", "pythia-tiny", "--gpu", "cpu", "--executor", "local", "--out", "T/" + "d" * 300],
     "at most 255"),
    ("grid", TINY_GRID + ["--name", "n" * 300], "is 300 characters; at most 100"),
    ("grid", TINY_GRID + ["--python", "/nonexistent/python"], "is not an executable program"),
    # 7. argparse errors (unknown choices, type conversions) are one line with a hint
    ("grid", TINY_GRID + ["--executor", "nope"], "invalid choice: 'nope'"),
    ("train", ["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ("data", ["--seq-len", "abc"], "--seq-len: 'abc' is not a valid int"),
    ("fit", ["T/same.csv", "--budget", "abc"], "--budget: 'abc' is not a valid float"),
    ("plan", ["--model", "pythia-1.4b", "--loss", "nope"], "invalid choice: 'nope'"),
    ("report", ["T/sweep", "--agg", "nope"], "invalid choice: 'nope'"),
    ("probe", ["--model", "pythia-tiny", "--zero", "x"], "--zero"),
    ("lm_eval", ["--limit", "x"], "--limit"),
    ("report", ["T/sweep", "--probe-csv", "x" * 300], "--probe-csv: no file at"),
    ("report", ["T/" + "x" * 300], "no sweep directory at"),
    ("grid", TINY_GRID + ["--name=--"], "'--' is not a value"),
    ("grid", ["--status", "T/" + "s" * 300], "is not a sweep folder"),
    ("grid", ["--status", "T/a\nb"], "a\\nb' is not a sweep folder"),
    ("lm_eval", ["--model-dir", "m", "--tasks=--"], "'--' is not a value"),
    ("train", ["--bogus\nline"], "--bogus\\nline"),  # an echoed newline is shown escaped: one line
    # 8. train.py: refused before the run folder exists
    ("train", ["--model", "pythia-tiny", "--out", "T/" + "r" * 300], "at most 255"),
    ("train", ["--model", "pythia-tiny", "--seed", str(2**32), "--out", "T/never"], "seed must be an integer"),
    ("train", ["--model", "pythia-tiny", "--seed", "-1", "--out", "T/never"], "seed must be an integer"),
    ("train", ["--model", "pythia-tiny", "--lr", "inf", "--out", "T/never"], "lr must be a finite number"),
    ("train", ["--model", "pythia-tiny", "--epochs", "nan", "--out", "T/never"], "epochs must be a finite"),
    ("train", ["--model", "pythia-tiny", "--out", "T/afile/run"], "is under a file"),
    # 9. probe, fit, report
    ("probe", ["--model", "pythia-tiny", "--gpu", "cpu", "--micro-batch-range", "1:99999999999", "--out", "T/never"],
     "--micro-batch-range takes LO:HI"),
    ("probe", ["--model", "pythia-tiny", "--gpu", "cpu", "--python", "/nonexistent/python", "--out", "T/never"],
     "is not an executable program"),
    ("fit", ["T/same.csv", "--seed", "-1", "--out", "T/never"], "--seed"),
    ("fit", ["T/same.csv", "--bootstrap", "1e20", "--out", "T/never"], "--bootstrap"),
    ("fit", ["T/same.csv", "--bootstrap", "10000000", "--out", "T/never"], "--bootstrap"),
    ("fit", ["T/same.csv", "--out", "T/never"], "the law is not identifiable"),
    ("fit", ["T/neg-rank.csv", "--out", "T/never"], "a LoRA rank is a positive integer"),
    ("fit", ["T/bytes.csv", "--out", "T/never"], "bytes.csv"),
    ("fit", ["T/same.csv", "--n-col=\r", "--out", "T/never"], "column '\\r'"),  # escaped: still one line
    *[("report", ["T/sweep", "--watch", value], "--watch") for value in ("nan", "inf", "1e300", "-1")],
    ("report", ["T/sweep", "--probe-csv", "T/peaks-text.csv"], "row 2: rank: 'eight' is not a valid int"),
    ("report", ["T/sweep", "--probe-csv", "T/peaks-bytes.csv"], "is not UTF-8 text"),
]


def run_main(command: str, argv: list, capsys) -> tuple[int, str, str]:
    """A command's main(argv) in this process: (exit code, stdout, stderr)."""
    import importlib
    module = importlib.import_module(MODULES[command])
    try:
        code = module.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("command, argv, expected", CLASS_CASES,
                         ids=[f"{c} {' '.join(a)[-60:]!r}" for c, a, _ in CLASS_CASES])
def test_hostile_input_is_one_error_line_and_nothing_written(tmp_path, capsys, command, argv, expected):
    hostile_files(tmp_path)
    before = _listing(tmp_path)
    code, out, err = run_main(command, _argv(argv, tmp_path), capsys)
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    assert expected.replace("T/", f"{tmp_path}/") in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert _listing(tmp_path) == before  # nothing written: no output folder, no half-written sweep


def test_alias_bomb_fails_fast_in_every_reader(tmp_path):
    """The YAML loader refuses anchors before composing: a bomb is one error, not a hang; report reads
    a cell.yaml that is one without hanging either (the cell is listed with what can be read)."""
    from ftgrid.errors import ConfigError
    from ftgrid.launch import report
    from ftgrid.yamlio import load_yaml_text
    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_yaml_text(ALIAS_BOMB * 50, "bomb.yaml")
    assert load_yaml_text("a: '*x & y'\nb: '&z'\n") == {"a": "*x & y", "b": "&z"}  # quoted text is text
    cell = tmp_path / "c1"
    cell.mkdir()
    (cell / "cell.yaml").write_text(ALIAS_BOMB)
    assert report._read_yaml(cell / "cell.yaml") == {}


def test_long_dataset_names_make_capped_cell_ids(tmp_path):
    """A 240-character dataset file name: the cell folder name is capped, the hash keeps cells apart."""
    from ftgrid.launch.spec import CELL_SLUG_MAX, SweepSpec, expand
    long = tmp_path / ("d" * 240 + ".jsonl")
    other = tmp_path / ("d" * 240 + "x.jsonl")
    cells = expand(SweepSpec(datasets=[str(long), str(other)]))
    assert len({c.id for c in cells}) == 2
    assert all(len(c.id) <= CELL_SLUG_MAX + 7 for c in cells)


def test_a_failed_write_leaves_no_sweep_yaml(tmp_path, monkeypatch, capsys):
    """sweep.yaml is written after every cell: a folder that has one holds all the cells it names."""
    from ftgrid.launch import grid
    out = tmp_path / "s"

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(grid.render, "cell_files", broken)
    with pytest.raises(OSError):
        grid.main(["--models", "pythia-tiny", "--gpu", "cpu", "--dry-run", "--executor", "local", "--out", str(out)])
    assert not (out / "sweep.yaml").exists()


def _read_only_folder(tmp_path):
    """A folder nobody may write: a read-only tmpfs mount as root (mode bits do not bind root), else mode 555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder, lambda: folder.chmod(0o755)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    return folder, lambda: subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("command, argv", [
    ("grid", ["--models", "pythia-tiny", "--gpu", "cpu", "--executor", "local", "--dry-run", "--out", "RO/sweep"]),
    ("train", ["--model", "pythia-tiny", "--out", "RO/run"]),
])
def test_read_only_output_folder_is_refused(tmp_path, capsys, command, argv):
    folder, release = _read_only_folder(tmp_path)
    try:
        code, out, err = run_main(command, [a.replace("RO/", f"{folder}/") for a in argv], capsys)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert "read-only" in err or "not writable" in err, err
        assert list(folder.iterdir()) == []
    finally:
        release()
