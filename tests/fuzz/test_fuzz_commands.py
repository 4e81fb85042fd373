"""Property-based fuzzing of every entry point: random and adversarial flag values, sweep YAML, cell YAML,
and the rows of a data file as the format adapters get them.

Each example calls a command's main(argv) in this process and asserts the promise of the README:
- the exit code is 0 or 2, and nothing raises (no traceback);
- on exit 2, stderr ends with exactly one `error:` line and nothing was written to the output folder;
- on exit 0, every rendered job.sbatch passes `bash -n`, its #SBATCH block is whole (no shell line before a
  directive), and every cell.yaml reloads through the run-config schema (the values that reached the
  files are the validated ones).
Commands whose acceptance would start real work (training, a probe, a fit, tokenizing) have that work
replaced by a marker exception: reaching it is "accepted", and by then nothing may have been written.

Example counts: FTGRID_FUZZ_EXAMPLES (default 40 per property); benchmarks/fuzz_long.py runs 10,000+.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ftgrid import schema
from ftgrid.launch import grid, plan, probe, report
from ftgrid.launch import fit as fitter

class Accepted(Exception):
    """Raised where a command, its input accepted, would start real work."""


# ---------------------------------------------------------------------------------------------
# values: valid ones (so that exit 0 happens), numbers at and past every edge, text that breaks lines,
# quotes, shell syntax and YAML syntax

NUMBERS = st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e400", "-1", "0", "1", "2", "8", "16", "0.5", "1e-4",
                           "-0", str(2**31), str(2**32), str(2**32 - 1), str(2**64), "1e20", "1e-320", "0x10",
                           "1_000", " 4", "4 ", "\u0663", "4.0", "1e3", "+3"])
TRICKY = st.sampled_from(["", " ", "\n", "x\n", "a\rb", "$(touch PWNED)", "`id`", "'", '"', ";rm -rf /", "a b",
                          "%j", "\\", "../..", "/proc/self", "-", "--", "=", ",", ",,", "a,b", "{}", "[]", "*a",
                          "&a", "\t", "\x1b[31m", "é", "\U0001d518", "#", "--x", "a=b", "~", "null", "yes", "x" * 300])
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
HOSTILE = st.one_of(NUMBERS, TRICKY, TEXT)


def flag_values(valid):
    return st.one_of(st.sampled_from(valid), HOSTILE) if valid else HOSTILE


def run_main(main, argv, **patches) -> tuple[int | str, str, str]:
    """main(argv) with stdout/stderr captured: (exit code or 'accepted', stdout, stderr). Any exception but
    SystemExit and Accepted propagates: a traceback is a failure of the property."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        for target, attribute in patches.items():
            stack.enter_context(mock.patch.object(attribute[0], attribute[1], side_effect=Accepted))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except Accepted:
            code = "accepted"
    return code, out.getvalue(), err.getvalue()


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def assert_refused_cleanly(code, out: str, err: str, tally, command: str) -> None:
    assert code in (0, 2, "accepted"), (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err
    if code == 2:
        lines = err.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], err
        assert "\n" not in errors[0]
    tally[(command, str(code))] += 1


SBATCH = re.compile(r"#SBATCH --([A-Za-z-]+)(?:=(.*))?")


def assert_rendered_files_are_sound(out_dir: Path, given_values: dict) -> None:
    """On exit 0: each job.sbatch parses (bash -n), its directives form one block before any shell line,
    no header line carries a control character, the resources typed reached it unchanged, and each
    cell.yaml passes the run-config schema."""
    jobs = sorted(out_dir.glob("*/job.sbatch"))
    assert jobs, listing(out_dir)
    for job in jobs:
        proc = subprocess.run(["bash", "-n", str(job)], capture_output=True, text=True)
        assert proc.returncode == 0, (job.read_text()[:3000], proc.stderr)
        lines = job.read_text().splitlines()
        first_shell = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
        assert not any(line.startswith("#SBATCH") for line in lines[first_shell:]), job.read_text()[:3000]
        directives = {}
        for line in lines[:first_shell]:
            assert not re.search(r"[\x00-\x1f\x7f]", line), line
            match = SBATCH.fullmatch(line)
            if match:
                directives[match.group(1)] = match.group(2)
        for key, value in given_values.items():
            if value:
                assert directives.get(key) == value, (key, value, directives)
        cfg = schema.load(job.parent / "cell.yaml")  # the validated values, reloaded through the schema
        for key, (lo, hi) in schema.LIMITS.items():
            value = getattr(cfg, key)
            assert value is None or (math.isfinite(value) and lo <= value <= hi), (key, value)


# ---------------------------------------------------------------------------------------------
# launch/grid.py: flags

GRID_FLAGS = {
    "--name": ["s1", "my.sweep"], "--models": ["pythia-tiny", "pythia-tiny,gpt2-tiny"], "--methods": ["lora", "full"],
    "--ranks": ["4", "8", "4,8"], "--alphas": ["2r", "16"], "--lrs": ["1e-4", "3e-4,1e-3"],
    "--datasets": ["wordnet:small", "wordnet:100", "wordnet:0.5"], "--tasks": ["sft"], "--seeds": ["0", "1,2"],
    "--zip": ["ranks,alphas"], "--include": ["model=pythia-tiny"], "--exclude": ["method=full"],
    "--gpu": ["cpu", "h100-80gb"], "--nodes": ["1", "2"], "--gpus-per-node": ["1", "8"], "--zero": ["0", "auto"],
    "--offload": ["none", "optimizer"], "--cpus-per-task": ["1", "4"], "--mem": ["4G", "8000"],
    "--time": ["01:00:00", "90", "2-12:00:00"], "--partition": ["gpu"], "--account": ["acct"], "--qos": ["high"],
    "--constraint": ["a100&ib"], "--launcher": ["torchrun", "deepspeed"], "--setup": ["module load cuda"],
    "--sbatch": ["--mail-type=END", "--exclude=node1"], "--container": ["image=nvcr.io/nvidia/pytorch:24.05-py3"],
    "--micro-batch": ["1", "4"], "--grad-accum": ["1", "2"], "--seq-len": ["64", "128"], "--max-steps": ["5", "-1"],
    "--epochs": ["1", "0.5"], "--target-modules": ["preset", "all-linear"], "--grad-ckpt": ["true", "false"],
    "--precision": ["auto", "fp32"], "--optimizer": ["adamw"], "--warmup": ["0.1", "0"], "--weight-decay": ["0.01"],
    "--min-lr": ["0"], "--schedule": ["cosine", "linear"], "--wandb-mode": ["disabled", "offline"],
    "--eval-rows": ["16", "0"], "--global-batch": ["8"], "--max-parallel": ["0", "4"], "--max-cells": ["10", "1"],
    "--rerun": ["failed"], "--python": [sys.executable, "/nonexistent/python"], "--status": [],
    "--set": ["lora_dropout=0.1", "dpo_beta=0.2", "seed=3", "neftune_alpha=5", "dataloader_workers=2",
              "save_every=10", "max_grad_norm=0.5", "rslora=true", "num_samples=0"],
}
SET_KEYS = st.sampled_from(sorted(schema.RunConfig.__dataclass_fields__) + ["learning_rate", "bogus", ""])
RESOURCE_DIRECTIVES = {"--partition": "partition", "--time": "time", "--mem": "mem", "--account": "account",
                       "--qos": "qos", "--constraint": "constraint"}


@st.composite
def grid_argv(draw):
    argv, typed = [], {}
    for flag in draw(st.lists(st.sampled_from(sorted(GRID_FLAGS)), max_size=6, unique=True)):
        if flag == "--set" and draw(st.booleans()):
            value = f"{draw(SET_KEYS)}={draw(HOSTILE)}"
        else:
            value = draw(flag_values(GRID_FLAGS[flag]))
        argv.append(f"{flag}={value}")
        typed[flag] = value
    return argv, typed


@given(grid_argv())
def test_grid_flags(fuzz_report, case):
    argv, typed = case
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        base = ["--models", "pythia-tiny", "--gpu", "cpu", "--executor", "local", "--dry-run", "--out", str(out)]
        code, stdout, stderr = run_main(grid.main, base + argv)
        assert_refused_cleanly(code, stdout, stderr, fuzz_report, "grid-flags")
        if code == 2:
            assert not out.exists(), listing(out)
        elif code == 0:
            given_values = {RESOURCE_DIRECTIVES[f]: v for f, v in typed.items() if f in RESOURCE_DIRECTIVES}
            assert_rendered_files_are_sound(out, given_values)


# ---------------------------------------------------------------------------------------------
# launch/grid.py --config: sweep files of any shape

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), NUMBERS, TRICKY, TEXT)
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.one_of(TRICKY, SET_KEYS), inner,
                                                                            max_size=3)), max_leaves=6)
PLAUSIBLE = {"name": st.sampled_from(["s", "sweep-2"]), "models": st.just(["pythia-tiny"]),
             "ranks": st.sampled_from([[4], [4, 8], "8"]), "lrs": st.sampled_from([[1e-4], ["3e-4"]]),
             "train": st.fixed_dictionaries({}, optional={"seq_len": st.sampled_from([64, 1e400, "x"]),
                                                          "micro_batch": st.sampled_from([2, 2**64, -1])}),
             "resources": st.fixed_dictionaries({}, optional={"partition": st.sampled_from(["gpu", "gpu\n"]),
                                                              "time": st.sampled_from(["01:00:00", 5, None]),
                                                              "nodes": st.sampled_from([1, 2, 2**64, "x"])}),
             "sbatch": st.sampled_from([["--mail-type=END"], [None], ["--x=\n"], "x"]),
             "setup": st.sampled_from([["module load a"], [{"a": "b"}], ["a\nb"]]),
             "container": st.sampled_from([{"image": "img"}, {"image": ["a", "b"]}, {1: "x"}, {"writable": "maybe"}]),
             "zip": st.sampled_from([["ranks", "alphas"], [1, 2], [["ranks"]], "ranks"]),
             "exclude": st.sampled_from([[{"method": "full"}], [1], [{}], {"a": 1}])}
SWEEP_KEYS = sorted(set(grid.SWEEP_KEYS) | set(PLAUSIBLE)) + ["bogus"]


@st.composite
def sweep_text(draw):
    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "text", "bomb"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "bomb":
        depth = draw(st.integers(1, 9))
        return "a: &a [x, x]\n" + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, "
                                           f"*{'a' if i == 0 else f'b{i - 1}'}]\n" for i in range(depth))
    data = {}
    for key in draw(st.lists(st.sampled_from(SWEEP_KEYS), max_size=5, unique=True)):
        data[key] = draw(PLAUSIBLE[key] if key in PLAUSIBLE and draw(st.booleans()) else YAML_VALUES)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))


@given(sweep_text())
def test_grid_sweep_files(fuzz_report, text):
    with tempfile.TemporaryDirectory() as tmp:
        cfg, out = Path(tmp) / "sweep.yaml", Path(tmp) / "out"
        cfg.write_text(text)
        code, stdout, stderr = run_main(grid.main, ["--config", str(cfg), "--gpu", "cpu", "--executor", "local",
                                                    "--dry-run", "--out", str(out), "--max-cells", "20"])
        assert_refused_cleanly(code, stdout, stderr, fuzz_report, "grid-sweep-yaml")
        if code == 2:
            assert not out.exists(), listing(out)
        elif code == 0:
            assert_rendered_files_are_sound(out, {})


# ---------------------------------------------------------------------------------------------
# finetune/train.py --cell (and flags): accepted means "would start training"; nothing written before

RUN_VALUES = {"model": ["pythia-tiny"], "rank": [4, 8], "alpha": [16], "lr": [1e-4], "epochs": [1], "seed": [0, 7],
              "micro_batch": [2], "seq_len": [64], "lora_dropout": [0.1], "warmup": [0.1], "max_steps": [5],
              "dataset": ["wordnet:small"], "eval_rows": [16]}


@st.composite
def cell_text(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=200))
    data = {}
    for key in draw(st.lists(SET_KEYS, max_size=6, unique=True)):
        valid = RUN_VALUES.get(key)
        data[key] = draw(st.sampled_from(valid) if valid and draw(st.booleans()) else YAML_VALUES)
    return yaml.safe_dump(data, sort_keys=False)


@given(cell_text())
def test_train_cell_files(fuzz_report, text):
    from ftgrid.finetune import train
    with tempfile.TemporaryDirectory() as tmp:
        cell, out = Path(tmp) / "cell.yaml", Path(tmp) / "run"
        cell.write_text(text)
        before = listing(Path(tmp))
        code, stdout, stderr = run_main(train.main, ["--cell", str(cell), "--out", str(out)],
                                        start=(train, "ensure_distributed_env"))
        assert_refused_cleanly(code, stdout, stderr, fuzz_report, "train-cell-yaml")
        assert code in (2, "accepted")
        assert listing(Path(tmp)) == before  # nothing written before the run starts, accepted or not
        if code == "accepted":
            cfg = schema.load(cell)
            for key, (lo, hi) in schema.LIMITS.items():
                value = getattr(cfg, key)
                assert value is None or (math.isfinite(value) and lo <= value <= hi), (key, value)


TRAIN_FLAGS = ["--model", "--rank", "--alpha", "--lr", "--epochs", "--seed", "--micro-batch", "--seq-len",
               "--lora-dropout", "--warmup", "--max-steps", "--dataloader-workers", "--weight-decay", "--dpo-beta",
               "--max-grad-norm", "--neftune-alpha", "--eval-rows", "--method", "--task", "--packing"]


@given(st.lists(st.tuples(st.sampled_from(TRAIN_FLAGS), HOSTILE), max_size=4))
def test_train_flags(fuzz_report, pairs):
    from ftgrid.finetune import train
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["--model", "pythia-tiny", "--out", str(out)] + [f"{flag}={value}" for flag, value in pairs]
        code, stdout, stderr = run_main(train.main, argv, start=(train, "ensure_distributed_env"))
        assert_refused_cleanly(code, stdout, stderr, fuzz_report, "train-flags")
        assert code in (2, "accepted") and not out.exists()


# ---------------------------------------------------------------------------------------------
# plan, probe, fit, report, data, lm_eval hook: flags

OTHER = {
    "plan": (plan.main, ["--model", "pythia-1.4b"],
             {"--rank": ["16"], "--micro-batch": ["4"], "--seq-len": ["512"], "--gpus": ["8"],
              "--gpus-per-node": ["4", "8"], "--zero": ["0", "3", "auto"], "--offload": ["none"],
              "--lora-dropout": ["0.1"], "--grad-accum": ["2"], "--method": ["lora", "full"],
              "--target-modules": ["all-linear"], "--precision": ["bf16"], "--gpu": ["a100-80gb"]}, {}),
    "probe": (probe.main, ["--model", "pythia-tiny", "--gpu", "cpu"],
              {"--micro-batch-range": ["1:4"], "--seq-len-range": ["64:256"], "--rank": ["4"], "--seq-len": ["64"],
               "--micro-batch": ["2"], "--gpus": ["1"], "--steps": ["2"], "--seq-step": ["32"], "--guess": ["none"],
               "--mem-cap-gib": ["0.5"], "--timeout": ["60"], "--python": [sys.executable, "/nonexistent/python"],
               "--executor": ["local", "slurm"], "--partition": ["gpu"], "--time": ["00:10:00"], "--zero": ["0"]},
              {"start": (probe.Probe, "run"), "base": (probe, "baseline_data_bytes")}),
    "fit": (fitter.main, ["CSV"],
            {"--budget": ["1e19"], "--bootstrap": ["0", "10"], "--seed": ["0"], "--delta": ["1e-3"],
             "--law": ["chinchilla", "zhang"], "--flops": ["lora"], "--n-col": ["params"], "--rank-col": ["rank"]},
            {"fit": (fitter, "fit_chinchilla"), "zhang": (fitter, "fit_zhang")}),
    "report": (report.main, ["SWEEP", "--no-plots"],
               {"--watch": ["1"], "--sort": ["eval_loss"], "--group": ["model"], "--pivot": ["model:rank:eval_loss"],
                "--agg": ["mean"], "--columns": ["cell,model"], "--probe-csv": ["PEAKS"]},
               {"watch": (report, "watch")}),
}


@st.composite
def other_argv(draw):
    command = draw(st.sampled_from(sorted(OTHER)))
    main, base, flags, patches = OTHER[command]
    argv = list(base)
    for flag in draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True)):
        argv.append(f"{flag}={draw(flag_values(flags[flag]))}")
    return command, argv


def _fixtures(tmp: Path) -> dict:
    csv = tmp / "results.csv"
    csv.write_text("params,tokens,eval_loss,rank\n" + "".join(f"{n}e6,{d}e5,{2 + 1 / n + 1 / d},{n}\n"
                                                               for n in (1, 2, 4) for d in (1, 3, 9)))
    sweep = tmp / "sweep"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text("name: s\n")
    (tmp / "peaks.csv").write_text("model,method,rank,micro_batch,seq_len,peak_gib\npythia-tiny,lora,4,1,64,0.5\n")
    return {"CSV": str(csv), "SWEEP": str(sweep), "PEAKS": str(tmp / "peaks.csv")}


@given(other_argv())
def test_other_command_flags(fuzz_report, case):
    command, argv = case
    main, _, _, patches = OTHER[command]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = _fixtures(tmp)
        argv = [names.get(a, a) for a in argv] + (["--out", str(tmp / "out")] if command in ("probe", "fit") else [])
        argv = [a.replace("=PEAKS", "=" + names["PEAKS"]) for a in argv]
        before = listing(tmp)
        code, stdout, stderr = run_main(main, argv, **patches)
        assert_refused_cleanly(code, stdout, stderr, fuzz_report, f"{command}-flags")
        if code == 2:
            assert listing(tmp) == before


@given(st.lists(st.tuples(st.sampled_from(["--seq-len", "--eval-rows", "--num-proc", "--packing", "--truncation",
                                            "--train-on", "--task", "--model", "--dataset"]), HOSTILE), max_size=3))
def test_data_flags(fuzz_report, pairs):
    from ftgrid.data_prep import __main__ as data_main
    import importlib
    prepare = importlib.import_module("ftgrid.data_prep.prepare")  # the module (the package exports the function)
    argv = ["--dataset", "wordnet:small", "--no-cache"] + [f"{flag}={value}" for flag, value in pairs]
    code, stdout, stderr = run_main(data_main.main, argv, start=(prepare, "prepare"))
    assert_refused_cleanly(code, stdout, stderr, fuzz_report, "data-flags")


@given(st.lists(st.tuples(st.sampled_from(["--limit", "--batch-size", "--tasks", "--model-dir"]), HOSTILE),
                max_size=3))
def test_lm_eval_hook_flags(fuzz_report, pairs):
    from ftgrid.finetune import lm_eval_hook
    argv = ["--model-dir", "/nonexistent", "--tasks", "hellaswag"] + [f"{f}={v}" for f, v in pairs]
    code, stdout, stderr = run_main(lm_eval_hook.main, argv, start=(lm_eval_hook, "evaluate"))
    assert_refused_cleanly(code, stdout, stderr, fuzz_report, "lm_eval-flags")


# ---------------------------------------------------------------------------------------------
# launch.report on a sweep whose cell.yaml is anything (alias bombs included): never a crash or a hang

@given(st.one_of(cell_text(), sweep_text()))
def test_report_reads_any_cell_yaml(fuzz_report, text):
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp)
        (sweep / "sweep.yaml").write_text("name: s\n")
        (sweep / "c1").mkdir()
        (sweep / "c1" / "cell.yaml").write_text(text)
        code, stdout, stderr = run_main(report.main, [str(sweep), "--no-plots"])
        assert_refused_cleanly(code, stdout, stderr, fuzz_report, "report-cell-yaml")
        assert code == 0


@pytest.mark.parametrize("text", ["name: x\nmodels: &m [pythia-tiny]\nranks: *m\n", "a: !!python/object:os.system x\n"])
def test_known_hostile_sweep_files(tmp_path, text):
    """Two shapes the fuzzer is unlikely to draw: an alias and a Python tag; both are one error line."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text(text)
    code, _, err = run_main(grid.main, ["--config", str(cfg), "--dry-run", "--out", str(tmp_path / "o")])
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------------------------
# finetune/generate.py on a trained cell's folder: flags refused in one line, or accepted before the model loads

@given(st.lists(st.tuples(st.sampled_from(["--max-new-tokens", "--temperature", "--top-p", "--seed", "--batch-size",
                                           "--out", "--prompts"]), HOSTILE), max_size=3))
def test_generate_flags(fuzz_report, pairs):
    from ftgrid import startup
    from ftgrid.finetune import generate
    with tempfile.TemporaryDirectory() as tmp:
        cell = Path(tmp) / "cell"
        (cell / "adapter").mkdir(parents=True)
        (cell / "cell.yaml").write_text(yaml.safe_dump({"model": "pythia-tiny", "name": "cell"}))
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text('{"prompt": "Name a colour."}\n')
        argv = ["--cell", str(cell), "--prompts", str(prompts)] + [f"{flag}={value}" for flag, value in pairs]
        before = listing(Path(tmp))
        code, stdout, stderr = run_main(generate.main, argv, start=(startup, "heavy_imports"))
        assert_refused_cleanly(code, stdout, stderr, fuzz_report, "generate-flags")
        assert listing(Path(tmp)) == before


# ---------------------------------------------------------------------------------------------
# format adapters on any row a local file can hold, as data preparation applies them: a canonical record or
# None (the row is rejected), never an exception (Arrow gives every column one type, but a user's file decides
# which)

ROW_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT,
                                    st.sampled_from(["\n\nHuman: hi\n\nAssistant: yo", "\n\nAssistant: x"])),
                          lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.sampled_from(["role", "content", "from", "value",
                                                                                   "start", "end", "label"]),
                                                                  inner, max_size=3)), max_leaves=6)


@given(st.sampled_from(sorted(n for n, f in __import__("ftgrid.data_prep.formats", fromlist=["FORMATS"]).FORMATS.items()
                              if not f.table)), st.data())
def test_format_adapters_take_any_row(fuzz_report, name, data):
    from ftgrid.data_prep import formats
    fmt = formats.FORMATS[name]
    row = {column: data.draw(ROW_VALUES) for column in sorted(fmt.columns)}
    record = formats.adapt_row(fmt.fn, row)
    assert record is None or isinstance(record, dict), record
    fuzz_report[("format-rows", "record" if record else "rejected")] += 1
