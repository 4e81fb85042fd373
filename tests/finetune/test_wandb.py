"""wandb: one offline run per cell inside its run directory, holding the cell config and the metrics;
never a credential in any file. (Two processes, one run: test_deepspeed.py; WANDB_MODE=disabled in the
environment wins over the cell: test_train.py's one-off run.)"""
from cells import SECRETS, TINY, metrics, wandb_records, wandb_runs, wandb_summary


def test_offline_run_holds_config_and_metrics_and_no_secrets(trained_cell):
    """The shared trained cell asked for wandb online with credentials in its environment; WANDB_MODE=offline
    in the environment wins (conftest.py)."""
    cell, proc = trained_cell
    m = metrics(cell)
    assert m["wandb_mode"] == "offline"
    runs = wandb_runs(cell)
    assert len(runs) == 1 and runs[0].parent.name.startswith("offline-run-"), runs
    run, config, summary = wandb_summary(wandb_records(runs[0]))
    assert run["project"] == "ftgrid-test" and run["group"] == "sweep-w" and run["name"] == cell.name
    assert run["tags"] == ["model:pythia-tiny", "method:lora", "task:sft", "family:gpt_neox"]
    assert run["job_type"] == "sft"
    # the cell config, as cell.yaml resolved it (its keys win over the Trainer's same-named ones)
    assert {k: config[k] for k in ("model", "method", "rank", "lr", "seq_len", "output_dir")} == \
        {"model": "pythia-tiny", "method": "lora", "rank": 8, "lr": 3e-3, "seq_len": 96, "output_dir": str(cell)}
    # the final metrics, and the Trainer's logged curve
    for key in ("eval_loss", "initial_eval_loss", "train_loss_last", "tokens", "trainable_params"):
        assert summary[key] == m[key], key
    assert summary["train/global_step"] == TINY["max_steps"]
    for path in [p for p in cell.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} written into {path}"
    for name, secret in SECRETS.items():
        assert secret not in proc.stdout + proc.stderr, f"{name} in the log"



def test_one_cell_is_one_wandb_run_across_requeues_and_the_users_project_wins(trained_cell, tmp_path):
    from ftgrid import schema
    from ftgrid.finetune.train import wandb_identity
    cell, _ = trained_cell
    cfg = schema.load(cell / "cell.yaml")
    run, _, _ = wandb_summary(wandb_records(wandb_runs(cell)[0]))
    assert run["id"] == wandb_identity(cfg, cell)["id"]  # derived from the cell: a requeue resumes it
    assert wandb_identity(cfg, cell) == wandb_identity(cfg, str(cell))
    assert wandb_identity(cfg, cell)["id"] != wandb_identity(cfg, tmp_path / cell.name)["id"]
    assert wandb_identity(cfg, cell, environ={"WANDB_PROJECT": "mine"})["project"] == "mine"
    assert wandb_identity(cfg, cell, environ={})["project"] == cfg.wandb_project
