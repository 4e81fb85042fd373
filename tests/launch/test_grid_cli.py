"""`python launch/grid.py` as a user types it: dry runs, the files of a cell, bad input."""
import csv
import json
import sys

import pytest
import yaml

from cells import ROOT, explain, run

GRID = ROOT / "launch" / "grid.py"


def grid(*args):
    return run([sys.executable, GRID, *args])


def test_dry_run_writes_four_cells_and_submits_nothing(tmp_path):
    out = tmp_path / "sweep"
    proc = grid("--models", "pythia-1.4b,mistral-7b", "--ranks", "16,64", "--dry-run", "--out", out)
    assert proc.returncode == 0, explain(proc)
    cells = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(cells) == 4
    for cell in cells:
        assert {"cell.yaml", "job.sbatch", "plan.json", "logs"} <= {p.name for p in cell.iterdir()}
        plan = json.loads((cell / "plan.json").read_text())
        assert (cell / "ds_config.json").exists() == (plan["zero"] > 0)  # plain DDP needs no DeepSpeed config
        # No status.json means pending (ftgrid.rundir.read_status); predicted OOM is written.
        assert (cell / "status.json").exists() == (not plan["fits"])
        line = next(x for x in proc.stdout.splitlines() if x.startswith(cell.name))  # one line per cell
        assert f"{plan['peak_gib']:8.1f}" in line and line.endswith("yes" if plan["fits"] else "PREDICTED OOM")
        run_cfg = yaml.safe_load((cell / "cell.yaml").read_text())
        assert run_cfg["name"] == cell.name and run_cfg["rank"] in (16, 64)
        assert f"--cell {cell.resolve() / 'cell.yaml'}" in (cell / "job.sbatch").read_text()
    assert "nothing submitted" in proc.stdout
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert sorted((r["model"], r["rank"]) for r in rows) == [
        ("mistral-7b", "16"), ("mistral-7b", "64"), ("pythia-1.4b", "16"), ("pythia-1.4b", "64")]
    assert all(float(r["peak_gib"]) > 1 for r in rows)
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["models"] == ["pythia-1.4b", "mistral-7b"] and sweep["ranks"] == [16, 64]


def test_rerunning_the_same_dry_run_gives_the_same_cells(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert grid("--models", "pythia-tiny", "--ranks", "4,8", "--lrs", "1e-3", "--dry-run", "--out", out).returncode == 0
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_sweep_from_yaml_with_flags_overriding(tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump({"name": "from-file", "models": ["pythia-tiny"], "ranks": [4, 8],
                                   "alphas": ["2r"], "train": {"seq_len": 64}, "resources": {"gpu": "cpu"}}))
    proc = grid("--config", cfg, "--ranks", "16", "--dry-run", "--out", tmp_path / "out")
    assert proc.returncode == 0, explain(proc)
    cells = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert len(cells) == 1
    run_cfg = yaml.safe_load((cells[0] / "cell.yaml").read_text())
    assert (run_cfg["rank"], run_cfg["alpha"], run_cfg["seq_len"]) == (16, 32.0, 64)


@pytest.mark.parametrize("args, message", [
    (["--models", "pythia-1.4bb"], "error: unknown model 'pythia-1.4bb' (did you mean 'pythia-1.4b'?)"),
    (["--models", "pythia-tiny", "--ranks", "0"], "error: rank must be a positive integer, got 0"),
    (["--models", "pythia-tiny", "--ranks", "-8"], "error: rank must be a positive integer, got -8"),
    (["--models", "pythia-tiny", "--ranks", "four"], "error: rank: 'four' is not a valid int"),
    (["--models", "pythia-tiny", "--gpu", "h1000"], "error: unknown gpu preset 'h1000'"),
    (["--models", "pythia-tiny", "--zero", "4"], "error: unknown zero stage '4'"),
    (["--models", "pythia-tiny", "--set", "lrr=1"], "error: unknown training key 'lrr'"),
    (["--set", "task=dpo"], "error: training key 'task' is an axis: use tasks"),
    (["--models", "pythia-tiny", "--partition", "gpu;rm -rf /"], "error: partition 'gpu;rm -rf /' has characters"),
    (["--models", "pythia-1.4bb,mistral-7bb", "--methods", "lorra"],
     "error: unknown model 'pythia-1.4bb' (did you mean 'pythia-1.4b'?)"),
    (["--tasks", "sfft"], "error: unknown task 'sfft' (did you mean 'sft'?)"),
    (["--sbatch=--comment=a b"], "error: sbatch line '--comment=a b' must look like --key=value or --flag"),
    (["--sbatch=--time=1:00:00"], "error: sbatch line '--time=1:00:00' sets --time"),
    (["--setup", "module load a\nrm -rf /"], "error: setup line"),
    (["--container", "imgae=x"], "error: unknown container key 'imgae' (did you mean 'image'?)"),
    (["--container", "image=x", "--launcher", "deepspeed"], "error: container flags need the torchrun launcher"),
    (["--launcher", "mpi"], "error: unknown launcher 'mpi'"),
    (["--global-batch", "100", "--micro-batch", "8"], "error: global batch 100 is not a positive multiple"),
    (["--ranks", "4,8", "--alphas", "8", "--zip", "ranks,alphas"], "error: zip: zipped axes need equal lengths"),
    (["--exclude", "model=pythia-tinyy"], "error: exclude rule 1: model 'pythia-tinyy' is not on the models axis"),
    (["--exclude", "modle=pythia-tiny"], "error: exclude rule 1: unknown key 'modle' (did you mean 'model'?)"),
    (["--rerun", "faild"], "error: --rerun takes states from"),
    (["--executor", "debug"], "error: executor 'debug' is not available"),
    (["--executor", "slurm", "--hostfile", "hosts.txt"], "error: --hostfile is for --executor hostfile"),
    (["--executor", "hostfile"], "error: --executor hostfile needs --hostfile FILE"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    out = tmp_path / "never"
    proc = grid(*args, "--dry-run", "--out", out)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    proc = grid("--models", "pythia-tiny", "--dry-run", "--out", target)
    assert proc.returncode == 2 and "is a file" in proc.stderr


def write_config(tmp_path, **data):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


@pytest.mark.parametrize("data, message", [
    (dict(modles=["pythia-tiny"], trian={}), "error: unknown sweep key 'modles' in CFG (did you mean 'models'?)"),
    (dict(resources={"partiton": "gpu"}), "error: unknown resources key 'partiton' (did you mean 'partition'?)"),
    (dict(train={"seq_lenn": 64}), "error: unknown training key 'seq_lenn' (did you mean 'seq_len'?)"),
    (dict(setup=["module load a\nmodule load b"]), "error: setup line"),
    (dict(setup="module load a"), "error: setup in CFG takes a list"),
    (dict(container=["image=x"]), "error: container in CFG takes a mapping"),
    (dict(include=[{"method": "ful"}], methods=["full", "lora"]), "error: include rule 1: method 'ful' is not on"),
])
def test_bad_sweep_file_is_one_line_exit_2_and_nothing_written(tmp_path, data, message):
    cfg = write_config(tmp_path, **data)
    out = tmp_path / "never"
    proc = grid("--config", cfg, "--dry-run", "--out", out)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().startswith(message.replace("CFG", str(cfg))), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_several_unknown_keys_are_named_in_one_line(tmp_path):
    cfg = write_config(tmp_path, modles=["pythia-tiny"], resources={"partiton": "gpu"})
    proc = grid("--config", cfg, "--set", "lrr=1", "--dry-run", "--out", tmp_path / "never")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    for part in ("unknown sweep key 'modles'", "(did you mean 'models'?)",
                 "unknown resources key 'partiton' (did you mean 'partition'?)", "unknown training key 'lrr'"):
        assert part in line


def test_sweep_file_with_rules_zip_setup_and_container_round_trips(tmp_path):
    cfg = write_config(tmp_path, name="full-file", models=["pythia-tiny", "gpt2-tiny"], methods=["full", "lora"],
                       ranks=[4, 8], alphas=[8, 32], lrs=["1e-3"], zip=["ranks", "alphas"],
                       exclude=[{"model": "gpt2-tiny", "method": "full"}], train={"micro_batch": 4, "global_batch": 16},
                       setup=["module load cuda/12", "source /opt/venv/bin/activate"], sbatch=["--mail-type=END"],
                       container={"image": "nvcr.io/nvidia/pytorch:24.05-py3"},
                       resources={"gpu": "cpu", "constraint": "a100&ib", "exclusive": True})
    out = tmp_path / "out"
    proc = grid("--config", cfg, "--dry-run", "--out", out)
    assert proc.returncode == 0, explain(proc)
    cells = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(cells) == 1 + 2 + 2  # pythia full, pythia lora (4,8) (8,32), gpt2 lora x2
    job = (out / cells[0] / "job.sbatch").read_text()
    for line in ("#SBATCH --constraint=a100&ib", "#SBATCH --exclusive", "#SBATCH --mail-type=END",
                 "module load cuda/12", "--container-image=nvcr.io/nvidia/pytorch:24.05-py3"):
        assert line in job
    run_cfg = yaml.safe_load((out / cells[0] / "cell.yaml").read_text())
    assert run_cfg["grad_accum"] == 4  # 16 / (4 x 1)
    # The resolved sweep.yaml is a sweep file: fed back, it gives the same cells.
    again = grid("--config", out / "sweep.yaml", "--dry-run", "--out", tmp_path / "again")
    assert again.returncode == 0, explain(again)
    assert sorted(p.name for p in (tmp_path / "again").iterdir() if p.is_dir()) == cells


def test_command_line_rules_and_zip(tmp_path):
    out = tmp_path / "out"
    proc = grid("--models", "pythia-tiny,gpt2-tiny", "--ranks", "4,8", "--alphas", "8,16", "--zip", "ranks,alphas",
                "--include", "model=pythia-tiny,rank=4", "--include", "model=gpt2-tiny", "--gpu", "cpu",
                "--dry-run", "--out", out)
    assert proc.returncode == 0, explain(proc)
    runs = sorted((c["model"], c["rank"], c["alpha"]) for c in
                  (yaml.safe_load((p / "cell.yaml").read_text()) for p in out.iterdir() if p.is_dir()))
    assert runs == [("gpt2-tiny", 4, 8.0), ("gpt2-tiny", 8, 16.0), ("pythia-tiny", 4, 8.0)]


def test_predicted_oom_cells_are_listed_and_not_run_unless_asked(tmp_path):
    out = tmp_path / "oom"
    args = ["--models", "llama-2-70b,pythia-tiny", "--methods", "full", "--gpu", "t4-16gb", "--zero", "0",
            "--out", out]
    proc = grid(*args, "--executor", "local", "--dry-run")
    assert proc.returncode == 0, explain(proc)
    oom_line = next(x for x in proc.stdout.splitlines() if x.startswith("llama-2-70b"))
    assert oom_line.endswith("PREDICTED OOM")
    assert "1 cell(s) to run, 0 skipped (done or in flight), 1 predicted OOM not run (--submit-oom runs them)" \
        in proc.stdout
    (oom_cell,) = [p for p in out.iterdir() if p.name.startswith("llama-2-70b")]
    assert json.loads((oom_cell / "status.json").read_text())["state"] == "predicted-oom"
    asked = grid(*args, "--executor", "local", "--dry-run", "--submit-oom")
    assert "2 cell(s) to run" in asked.stdout


def test_status_counts_states_and_shows_failing_cells_log_tails(tmp_path):
    from ftgrid import rundir
    out = tmp_path / "sweep"
    proc = grid("--models", "pythia-tiny", "--ranks", "2,4,8", "--gpu", "cpu", "--dry-run", "--out", out)
    assert proc.returncode == 0, explain(proc)
    a, b, c = sorted(p for p in out.iterdir() if p.is_dir())
    rundir.write_status(a, "done")
    rundir.write_status(b, "failed", error="ValueError: no column 'output' in broken.jsonl\nTraceback ...")
    (b / "logs" / "train.log").write_text("".join(f"log line {i}\n" for i in range(40)))
    proc = grid("--status", out)
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{out}: 3 cell(s): pending 1, done 1, failed 1"
    assert f"FAILED {b.name}" in lines
    assert "  error: ValueError: no column 'output' in broken.jsonl" in lines
    assert "  | log line 39" in lines and "  | log line 25" in lines and "  | log line 24" not in lines
    assert f"--rerun failed" in lines[-1]
    assert a.name not in proc.stdout and c.name not in proc.stdout


def test_status_of_a_folder_without_cells_is_refused(tmp_path):
    proc = grid("--status", tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error:")


# --- servers without SLURM -------------------------------------------------------------------


def test_hostfile_dry_run_prints_the_commands_and_writes_runner_scripts(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node-a slots=2\nnode-b slots=2\n")
    out = tmp_path / "out"
    proc = grid("--models", "pythia-tiny", "--ranks", "4", "--gpu", "cpu", "--hostfile", hosts, "--dry-run",
                "--out", out)
    assert proc.returncode == 0, explain(proc)
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    assert f"  bash {cell.resolve() / 'run_deepspeed.sh'}" in proc.stdout
    assert f"  on node-b: bash {cell.resolve() / 'run_torchrun.sh'} 1" in proc.stdout
    assert (out / "hosts.txt").read_text() == "node-a slots=2\nnode-b slots=2\n"
    assert f"--hostfile \"$hostfile\"" in (cell / "run_deepspeed.sh").read_text()
    assert "--nnodes 2 --nproc_per_node 2" in (cell / "run_torchrun.sh").read_text()
    assert yaml.safe_load((out / "sweep.yaml").read_text())["resources"]["nodes"] == 2


def test_malformed_hostfile_names_its_line(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node-a slots=2\nnode-b: 2\n")
    proc = grid("--models", "pythia-tiny", "--hostfile", hosts, "--dry-run", "--out", tmp_path / "never")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {hosts} line 2: 'node-b: 2' is not `HOST slots=N` (N >= 1)")
    assert not (tmp_path / "never").exists()


def test_hostfile_disagreeing_with_nodes_is_refused(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node-a slots=2\n")
    proc = grid("--models", "pythia-tiny", "--hostfile", hosts, "--nodes", "2", "--dry-run", "--out", tmp_path / "n")
    assert proc.returncode == 2 and "--nodes 2 disagrees with" in proc.stderr


def test_multi_host_hostfile_without_pdsh_is_not_pretended(tmp_path):
    import shutil
    if shutil.which("pdsh"):
        pytest.skip("pdsh is installed here")
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("node-a slots=1\nnode-b slots=1\n")
    out = tmp_path / "out"
    proc = grid("--models", "pythia-tiny", "--gpu", "cpu", "--hostfile", hosts, "--out", out)
    assert proc.returncode == 1, explain(proc)
    assert "not run: pdsh is not installed" in proc.stderr
    assert "on node-b: bash" in proc.stdout
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    assert not (cell / "status.json").exists()  # still pending: nothing ran


@pytest.mark.slow
def test_hostfile_executor_runs_the_deepspeed_runner_script(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("localhost slots=1\n")
    out = tmp_path / "out"
    proc = grid("--models", "pythia-tiny", "--ranks", "4", "--lrs", "3e-3", "--gpu", "cpu", "--max-steps", "6",
                "--seq-len", "64", "--set", "eval_rows=32", "--hostfile", hosts, "--out", out)
    assert proc.returncode == 0, explain(proc)
    (cell,) = [p for p in out.iterdir() if p.is_dir()]
    log = (cell / "logs" / "train.log").read_text()
    assert "deepspeed.launcher.launch" in log  # DeepSpeed's launcher started the rank
    assert json.loads((cell / "status.json").read_text())["state"] == "done"
    assert json.loads((cell / "metrics.json").read_text())["steps"] == 6


def test_a_default_lr_sweep_is_fed_back_from_its_sweep_yaml(tmp_path):
    """No --lrs: each method's default lr. The resolved sweep.yaml says so by leaving lrs out, and feeding it
    back (a re-run from the sweep folder) gives the same cell."""
    out = tmp_path / "out"
    assert grid("--models", "pythia-tiny", "--gpu", "cpu", "--dry-run", "--out", out).returncode == 0
    assert "lrs" not in yaml.safe_load((out / "sweep.yaml").read_text())
    again = grid("--config", out / "sweep.yaml", "--dry-run", "--out", out)
    assert again.returncode == 0, explain(again)
    assert "0 cell(s) to run" not in again.stdout and len([p for p in out.iterdir() if p.is_dir()]) == 1
    # no --time: the limit was predicted, and is predicted again from the fed-back sweep file
    assert "time" not in yaml.safe_load((out / "sweep.yaml").read_text())["resources"]
    assert "no --time was given" in next(out.glob("*/job.sbatch")).read_text()


def test_each_local_dataset_is_checked_against_its_own_cells_eval_rows(tmp_path, capsys):
    """A set too small to hold out its eval rows is refused before anything is written, by the eval_rows of
    the cells that read it, not those of another dataset of the sweep."""
    from ftgrid.launch import grid
    for name, n in (("small", 12), ("big", 300)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n"
                                                        for i in range(n)))

    def dry_run(eval_rows):
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({"models": ["pythia-tiny"], "axes": {"eval_rows": eval_rows},
                                         "datasets": [str(tmp_path / "small.jsonl"), str(tmp_path / "big.jsonl")],
                                         "zip": ["datasets", "eval_rows"]}))
        out = tmp_path / f"out-{eval_rows[0]}"
        code = grid.main(["--config", str(sweep), "--gpu", "cpu", "--dry-run", "--out", str(out)])
        return code, out, capsys.readouterr()

    code, out, printed = dry_run([2, 100])
    assert code == 0, printed.err
    assert len(list(out.glob("*/cell.yaml"))) == 2
    code, out, printed = dry_run([100, 2])
    assert code == 2 and not out.exists()
    assert printed.err.strip() == f"error: dataset {tmp_path}/small.jsonl has 12 usable rows, too few for 100 eval rows"
