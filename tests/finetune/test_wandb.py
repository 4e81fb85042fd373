"""wandb: one offline run per cell inside its run directory, holding the cell config and the metrics;
never a credential in any file. (Two processes, one run: test_deepspeed.py.)"""
from cells import explain, make_cell, metrics, train, wandb_records, wandb_runs, wandb_summary

SECRETS = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "HF_TOKEN": "hf_ftgridFakeToken42"}


def test_offline_run_holds_config_and_metrics_and_no_secrets(tmp_path):
    cell = tmp_path / "tracked"
    # A key in the environment would mean "online"; WANDB_MODE=offline (set by the tests) wins.
    proc = train(make_cell(cell, wandb_mode="online", wandb_group="sweep-w", wandb_project="ftgrid-test",
                           max_steps=10, num_samples=0), WANDB_MODE="offline", **SECRETS)
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["wandb_mode"] == "offline"
    runs = wandb_runs(cell)
    assert len(runs) == 1 and runs[0].parent.name.startswith("offline-run-"), runs
    run, config, summary = wandb_summary(wandb_records(runs[0]))
    assert run["project"] == "ftgrid-test" and run["group"] == "sweep-w" and run["name"] == "tracked"
    assert run["tags"] == ["model:pythia-tiny", "method:lora", "task:sft", "family:gpt_neox"]
    assert run["job_type"] == "sft"
    # the cell config, as cell.yaml resolved it (its keys win over the Trainer's same-named ones)
    assert {k: config[k] for k in ("model", "method", "rank", "lr", "seq_len", "output_dir")} == \
        {"model": "pythia-tiny", "method": "lora", "rank": 8, "lr": 3e-3, "seq_len": 96, "output_dir": str(cell)}
    # the final metrics, and the Trainer's logged curve
    for key in ("eval_loss", "initial_eval_loss", "train_loss_last", "tokens", "trainable_params"):
        assert summary[key] == m[key], key
    assert summary["train/global_step"] == 10
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} written into {path}"
    for name, secret in SECRETS.items():
        assert secret not in proc.stdout + proc.stderr, f"{name} in the log"


def test_wandb_mode_disabled_in_the_environment_wins(tmp_path):
    cell = tmp_path / "untracked"
    proc = train(make_cell(cell, wandb_mode="online", max_steps=2, num_samples=0), WANDB_MODE="disabled")
    assert proc.returncode == 0, explain(proc)
    assert metrics(cell)["wandb_mode"] == "disabled" and not (cell / "wandb").exists()
