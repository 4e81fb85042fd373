"""Rendered files: golden text, valid bash, DeepSpeed's own config parser, quoting."""
import difflib
import json
import subprocess
from pathlib import Path

import pytest

from launch import plan as planner
from launch import render
from launch.spec import Resources, SweepSpec, expand

GOLDEN = Path(__file__).parent / "golden"
FIXED = dict(python="/opt/venv/bin/python", project_root=Path("/opt/ftgrid"))


def check_golden(name: str, text: str, update: bool) -> None:
    path = GOLDEN / name
    if update or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pytest.skip(f"wrote golden file {path.name}; re-run to compare")
    expected = path.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "golden", "rendered"))
    assert text == expected, f"{name} differs from its golden file (pytest --update-golden rewrites):\n{diff}"


def one_cell(**res):
    spec = SweepSpec(name="golden", models=["pythia-1.4b"], ranks=[16], resources=Resources(**res))
    cell = expand(spec)[0]
    p = planner.plan_cell(cell.run, gpu=cell.resources.gpu, gpus=cell.resources.world_size, zero=2)
    return cell, p


def test_sbatch_for_one_gpu_lora_matches_golden_and_is_valid_bash(tmp_path, update_golden):
    cell, p = one_cell(partition="gpu", account="proj1", time="04:00:00", mem="64G")
    text = render.sbatch(cell=cell, sweep="golden", run_dir=Path("/runs/golden") / cell.id, plan=p, **FIXED)
    (tmp_path / "job.sbatch").write_text(text)
    assert subprocess.run(["bash", "-n", tmp_path / "job.sbatch"]).returncode == 0
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --account=proj1",
                 "#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --mem=64G"):
        assert line in text.splitlines()
    check_golden("pythia-1.4b_lora_1gpu.sbatch", text, update_golden)


def test_values_reaching_the_shell_are_quoted(tmp_path):
    cell, p = one_cell()
    evil = tmp_path / "run $(touch pwned) `touch pwned2`; 'q'"
    text = render.sbatch(cell=cell, sweep="x", run_dir=evil, plan=p, python="/usr/bin/python3",
                         project_root=tmp_path)
    script = tmp_path / "job.sh"
    # Run only the shell part after the #SBATCH header with srun/scontrol stubbed to echo.
    body = text.replace("scontrol show hostnames", "echo").replace("srun --kill-on-bad-exit=1", "echo")
    script.write_text(body)
    proc = subprocess.run(["bash", script], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "7",
                               "SLURM_NNODES": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert str(evil / "cell.yaml") in proc.stdout


@pytest.mark.parametrize("zero, offload", [(0, "none"), (1, "none"), (2, "none"), (2, "optimizer"),
                                           (3, "none"), (3, "optimizer"), (3, "optimizer+params")])
def test_ds_config_is_accepted_by_deepspeed(zero, offload):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfDeepSpeedConfig  # noqa: F401 (the HF side parses it too)

    cfg = render.ds_config(zero, offload)
    assert cfg["zero_optimization"]["stage"] == zero
    assert ("offload_optimizer" in cfg["zero_optimization"]) == (offload != "none")
    assert ("offload_param" in cfg["zero_optimization"]) == (offload == "optimizer+params")
    # DeepSpeed's parser needs concrete batch numbers where the HF integration would fill "auto".
    concrete = json.loads(json.dumps(cfg).replace('"auto"', "null"))
    concrete.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2, train_batch_size=8,
                    gradient_clipping=1.0, bf16={"enabled": False}, fp16={"enabled": False})
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        concrete["zero_optimization"][key] = 1e6
    parsed = DeepSpeedConfig(concrete)  # without a process group DeepSpeed assumes world size 1
    assert parsed.zero_optimization_stage == zero
    assert parsed.zero_config.gather_16bit_weights_on_model_save is True


def test_missing_template_values_fail_loudly():
    import jinja2
    with pytest.raises(jinja2.UndefinedError):
        render.ENV.get_template("zero.json.j2").render(zero=2)  # offload missing
