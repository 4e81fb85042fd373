"""Rendered files: golden text per scenario, valid bash, `sbatch --test-only`, DeepSpeed's own config
parser, quoting.

Golden files prove "unchanged", not "correct": each scenario also checks the lines that matter.
The plan in these renders is fixed (not the planner's current numbers), so a recalibrated planner
does not rewrite the golden files; `pytest --update-golden` rewrites them after a template change.
"""
import dataclasses
import difflib
import json
import subprocess
from pathlib import Path

import pytest

from ftgrid.launch import plan as planner
from ftgrid.launch import render
from ftgrid.launch.spec import Resources, SweepSpec, expand

GOLDEN = Path(__file__).parent / "golden"
CTX = dict(python="/opt/venv/bin/python", project_root=Path("/opt/ftgrid"))
RUNS = Path("/runs/golden")
HOSTS = (("gpu-a", 8), ("gpu-b", 8))

# scenario -> (sweep spec fields, resources, (zero, offload, peak GiB) of the fixed plan)
SCENARIOS = {
    "lora_1gpu": (dict(models=["pythia-1.4b"], ranks=[16]),
                  dict(gpu="h100-80gb", partition="gpu", account="proj1", time="04:00:00", mem="64G"),
                  (0, "none", 7.4)),
    "zero2_1x8": (dict(models=["llama-2-7b"], methods=["full"], train={"micro_batch": 4, "grad_ckpt": True}),
                  dict(gpu="a100-80gb", gpus_per_node=8, zero="2", partition="gpu", constraint="a100&ib",
                       exclusive=True, sbatch=("--mail-type=END", "--comment=ftgrid")),
                  (2, "none", 61.3)),
    "zero3_offload_4x8_full": (
        dict(models=["llama-2-70b"], methods=["full"], global_batch=256,
             train={"micro_batch": 1, "seq_len": 2048, "grad_ckpt": True}),
        dict(gpu="h100-80gb", nodes=4, gpus_per_node=8, zero="3", offload="optimizer", time="2-00:00:00",
             mem="0", account="llm", qos="high", setup=("module load cuda/12.4", "source /opt/venv/bin/activate"),
             container={"image": "nvcr.io/nvidia/pytorch:24.05-py3", "mounts": "/data:/data,/opt:/opt",
                        "mount-home": False}),
        (3, "optimizer", 66.0)),
    "qlora_zero3_1x4": (dict(models=["llama-2-70b"], methods=["qlora"], ranks=[64], alphas=[16]),
                        dict(gpu="a100-80gb", gpus_per_node=4, zero="3"), (3, "none", 31.5)),
    "mixtral_lora_zero3_1x8": (dict(models=["mixtral-8x7b"], ranks=[16], train={"seq_len": 1024}),
                               dict(gpu="h100-80gb", gpus_per_node=8, zero="3"), (3, "none", 24.2)),
    "deepspeed_launcher_2x8": (dict(models=["pythia-6.9b"], methods=["full"]),
                               dict(gpu="h100-80gb", nodes=2, gpus_per_node=8, zero="3", launcher="deepspeed",
                                    setup=("source /opt/venv/bin/activate",)),
                               (3, "none", 30.0)),
    "hostfile_2x8": (dict(models=["mistral-7b"], ranks=[16]),
                     dict(gpu="h100-80gb", nodes=2, gpus_per_node=8, zero="2",
                          setup=("source /opt/venv/bin/activate",)),
                     (2, "none", 24.0)),
}


def check_golden(name: str, text: str, update: bool) -> bool:
    """Compare with the golden file; with --update-golden (or when it is missing) write it: True."""
    path = GOLDEN / name
    if update or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return True
    expected = path.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "golden", "rendered"))
    assert text == expected, f"{name} differs from its golden file (pytest --update-golden rewrites):\n{diff}"
    return False


def scenario_cell(name: str, **res_override):
    fields, res, (zero, offload, peak) = SCENARIOS[name]
    spec = SweepSpec(name="golden", **fields, resources=Resources(**{**res, **res_override}))
    (cell,) = expand(spec)
    fixed = planner.Plan(peak_gib=peak, capacity_gib=74.4, fits=True, breakdown={}, zero=zero, offload=offload,
                         gpu=cell.resources.gpu, gpus=cell.resources.world_size)
    return cell, fixed


def render_scenario(name: str, root: Path = RUNS, **res_override) -> tuple:
    cell, fixed = scenario_cell(name, **res_override)
    hosts = HOSTS if name.startswith("hostfile") else ()
    ctx = render.Context(sweep="golden", hosts=hosts, hostfile=root / render.HOSTFILE if hosts else None, **CTX)
    return cell, render.cell_files(cell, fixed, root / cell.id, ctx)


GOLDEN_FILES = ("job.sbatch", "ds_config.json", "run_deepspeed.sh", "run_torchrun.sh")


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_matches_golden_and_scripts_are_valid_bash(name, tmp_path, update_golden):
    cell, files = render_scenario(name)
    for fname, text in files.items():
        if fname.endswith((".sbatch", ".sh")):
            script = tmp_path / fname
            script.write_text(text)
            proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
            assert proc.returncode == 0, f"{fname}: {proc.stderr}"
    assert ("ds_config.json" in files) == (SCENARIOS[name][2][0] > 0)  # no DeepSpeed config for plain DDP
    # The hostfile scenario's job.sbatch is the same template as the others: its runner scripts are the point.
    names = GOLDEN_FILES[1:] if name.startswith("hostfile") else GOLDEN_FILES
    written = [f for f in names if f in files and check_golden(f"{name}.{f}", files[f], update_golden)]
    if written:
        pytest.skip(f"wrote golden files {', '.join(written)} of {name}; re-run to compare")


def lines(name: str, fname: str = "job.sbatch") -> list[str]:
    return render_scenario(name)[1][fname].splitlines()


def test_one_gpu_lora_requests_and_signal():
    text = lines("lora_1gpu")
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --account=proj1",
                 "#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --mem=64G", "#SBATCH --nodes=1"):
        assert line in text
    assert not any("--exclusive" in x or "--constraint" in x for x in text)


def test_constraint_exclusive_and_extra_sbatch_lines_are_in_the_header():
    text = lines("zero2_1x8")
    header = text[:text.index("set -euo pipefail")]  # sbatch stops reading #SBATCH at the first command
    for line in ("#SBATCH --constraint=a100&ib", "#SBATCH --exclusive", "#SBATCH --mail-type=END",
                 "#SBATCH --comment=ftgrid", "#SBATCH --gpus-per-node=8"):
        assert line in header
    assert any("--nproc_per_node 8" in x for x in text)


def test_setup_lines_verbatim_before_the_launcher_and_container_flags_on_srun():
    text = lines("zero3_offload_4x8_full")
    assert "module load cuda/12.4" in text and "source /opt/venv/bin/activate" in text
    assert text.index("module load cuda/12.4") < next(i for i, x in enumerate(text) if "FTGRID_NODE=1 srun" in x)
    srun = next(x for x in text if "FTGRID_NODE=1 srun" in x)
    assert ("--container-image=nvcr.io/nvidia/pytorch:24.05-py3 --no-container-mount-home "
            "--container-mounts=/data:/data,/opt:/opt") in srun  # sorted by key: stable output
    assert "#SBATCH --nodes=4" in text and any("--nnodes 4 --nproc_per_node 8" in x for x in text)


def test_global_batch_sets_accumulation_in_cell_yaml():
    import yaml
    _, files = render_scenario("zero3_offload_4x8_full")
    run = yaml.safe_load(files["cell.yaml"])
    assert run["micro_batch"] * run["grad_accum"] * 32 == 256 and run["grad_accum"] == 8
    assert run["deepspeed"] == "ds_config.json" and run["method"] == "full"


def test_deepspeed_launcher_builds_a_hostfile_from_the_allocation():
    text = "\n".join(lines("deepspeed_launcher_2x8"))
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed \'s/$/ slots=8/\' > "$hostfile"' in text
    assert "-m deepspeed.launcher.runner --hostfile \"$hostfile\" --no_local_rank" in text
    assert '--master_addr "$head_node" --master_port "$port" --num_nodes 2 --num_gpus 8' in text
    assert "--no_ssh_check" not in text  # two nodes: DeepSpeed's ssh check must run
    assert "torch.distributed.run" not in text and "FTGRID_NODE=1 srun" not in text
    assert "pdsh" in text  # the header says what the DeepSpeed launcher needs


def test_hostfile_scripts_have_one_torchrun_per_node_rank():
    _, files = render_scenario("hostfile_2x8")
    ds, tr = files["run_deepspeed.sh"], files["run_torchrun.sh"]
    assert "hostfile=/runs/golden/hosts.txt" in ds and "head_node=gpu-a" in ds and "pdsh" in ds
    assert "--num_nodes 2 --num_gpus 8" in ds
    assert "#   on gpu-a:  bash " in tr and "run_torchrun.sh 0" in tr and "run_torchrun.sh 1" in tr
    assert '--nnodes 2 --nproc_per_node 8 --node_rank "$node_rank"' in tr


def test_runner_rejects_a_node_rank_outside_the_hostfile(tmp_path):
    _, files = render_scenario("hostfile_2x8")
    script = tmp_path / "run_torchrun.sh"
    script.write_text(files["run_torchrun.sh"])
    for bad in ("2", "x", ""):
        proc = subprocess.run(["bash", script, bad], capture_output=True, text=True)
        assert proc.returncode == 2 and "usage" in proc.stderr


def test_values_reaching_the_shell_are_quoted(tmp_path):
    cell, p = scenario_cell("lora_1gpu")
    evil = tmp_path / "run $(touch pwned) `touch pwned2`; 'q'"
    text = render.sbatch(cell=cell, sweep="x", run_dir=evil, plan=p, python="/usr/bin/python3",
                         project_root=tmp_path)
    script = tmp_path / "job.sh"
    # Run the per-node branch (as a submitit array task does) with scontrol stubbed and python = echo.
    body = text.replace("scontrol show hostnames", "echo").replace("exec /usr/bin/python3", "exec echo")
    script.write_text(body)
    proc = subprocess.run(["bash", script], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "7",
                               "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "1", "FTGRID_NODE": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert str(evil / "cell.yaml") in proc.stdout


def test_per_node_branch_refuses_a_step_with_the_wrong_task_count(tmp_path):
    cell, p = scenario_cell("zero3_offload_4x8_full")
    script = tmp_path / "job.sh"
    script.write_text(render.sbatch(cell=cell, sweep="x", run_dir=tmp_path, plan=p, python="/bin/false",
                                    project_root=tmp_path).replace("module load", "true").replace("source", "true"))
    # This branch runs before any srun: only `scontrol show hostnames` is needed, which a machine without
    # SLURM lacks, so a stand-in that names the one node takes its place.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/sh\necho n1\n")
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    proc = subprocess.run(["bash", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "7",
                               "SLURM_NTASKS": "1", "FTGRID_NODE": "1", "HOME": str(tmp_path)})
    assert proc.returncode == 2 and "planned for 4 node(s)" in proc.stderr


def deepspeed_parses(cfg: dict, zero: int) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfDeepSpeedConfig  # noqa: F401 (the HF side parses it too)

    # DeepSpeed's parser needs concrete batch numbers where the HF integration would fill "auto".
    concrete = json.loads(json.dumps(cfg).replace('"auto"', "null"))
    concrete.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2, train_batch_size=8,
                    gradient_clipping=1.0, bf16={"enabled": False}, fp16={"enabled": False})
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        concrete["zero_optimization"][key] = 1e6
    parsed = DeepSpeedConfig(concrete)  # without a process group DeepSpeed assumes world size 1
    assert parsed.zero_optimization_stage == zero
    assert parsed.zero_config.gather_16bit_weights_on_model_save is True


@pytest.mark.parametrize("name", [n for n in SCENARIOS if SCENARIOS[n][2][0] > 0])
def test_each_scenario_ds_config_is_accepted_by_deepspeed(name):
    _, files = render_scenario(name)
    zero, offload, _ = SCENARIOS[name][2]
    cfg = json.loads(files["ds_config.json"])
    assert ("offload_optimizer" in cfg["zero_optimization"]) == (offload != "none")
    deepspeed_parses(cfg, zero)


@pytest.mark.parametrize("zero, offload", [(0, "none"), (1, "none"), (2, "none"), (2, "optimizer"),
                                           (3, "none"), (3, "optimizer"), (3, "optimizer+params")])
def test_ds_config_is_accepted_by_deepspeed(zero, offload):
    cfg = render.ds_config(zero, offload)
    assert cfg["zero_optimization"]["stage"] == zero
    assert ("offload_optimizer" in cfg["zero_optimization"]) == (offload != "none")
    assert ("offload_param" in cfg["zero_optimization"]) == (offload == "optimizer+params")
    deepspeed_parses(cfg, zero)


# The GPU requests of the scenarios cannot be met on the CPU-only test cluster; their CPU variants
# (same templates and options, CPU-sized requests) must pass `sbatch --test-only` there.
CPU_VARIANT = dict(gpu="cpu", gpus_per_node=0, nodes=1, cpus_per_task=1, mem="3G", time="00:10:00", partition="",
                   account="", qos="", constraint="")


@pytest.mark.slurm
@pytest.mark.parametrize("name", [n for n in SCENARIOS if not n.startswith("hostfile")])
def test_cpu_variant_passes_sbatch_test_only(name, slurm_cluster, tmp_path):
    _, files = render_scenario(name, root=tmp_path, **CPU_VARIANT)
    script = tmp_path / "job.sbatch"
    script.write_text(files["job.sbatch"])
    (tmp_path / "logs").mkdir()
    proc = subprocess.run(["sbatch", "--test-only", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr


def test_missing_template_values_fail_loudly():
    import jinja2
    with pytest.raises(jinja2.UndefinedError):
        render.ENV.get_template("zero.json.j2").render(zero=2)  # offload missing


def test_cell_files_renders_without_writing(tmp_path):
    cell, p = scenario_cell("lora_1gpu")
    files = render.cell_files(cell, dataclasses.replace(p, zero=2), tmp_path / "c",
                              render.Context(sweep="x", python="/p"))
    assert set(files) == {"cell.yaml", "plan.json", "job.sbatch", "ds_config.json"}
    assert not (tmp_path / "c").exists()


def test_cell_yaml_is_exactly_what_yaml_dump_writes():
    import yaml
    for name in SCENARIOS:
        cell, _ = scenario_cell(name)
        run = dict(cell.run, target_modules=["q_proj", "v_proj"], extra={"a": [1, 2]}, flag=True, one=1, f=1.0)
        assert render.yaml_mapping(run) == yaml.safe_dump(run, sort_keys=False)
