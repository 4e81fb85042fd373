"""Optimizers and learning-rate defaults: every run-config optimizer reaches the Trainer as the optimizer it
names and takes a few steps on CPU that lower the loss; the lr, when not given, follows the method (full
2e-5, adapters 2e-4) and the grid's dry-run table shows it."""
import sys

import pytest

from cells import ROOT, explain, run

# run-config name -> (module, class, 8-bit, paged) of the optimizer the Trainer builds. bitsandbytes runs the
# paged one unpaged on CPU (its warning says so); on a GPU its states live in CUDA unified memory.
OPTIMIZERS = {"adamw": ("torch.optim", "AdamW", False, False),
              "adamw-8bit": ("bitsandbytes.optim", "AdamW", True, False),
              "paged-adamw-8bit": ("bitsandbytes.optim", "AdamW", True, True),
              "adafactor": ("transformers.optimization", "Adafactor", False, False),
              "sgd": ("torch.optim", "SGD", False, False)}


def test_every_schema_optimizer_is_mapped():
    from ftgrid import schema
    from ftgrid.finetune import tasks
    from ftgrid.launch import plan
    assert set(OPTIMIZERS) == set(schema.OPTIMIZERS) == set(tasks.OPTIM_NAMES) == set(plan.OPTIMIZER_BYTES)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_takes_steps_on_cpu(tmp_path, name):
    import torch
    import transformers
    from ftgrid import schema
    from ftgrid.finetune import models, tasks

    cfg = schema.from_dict({"model": "pythia-tiny", "method": "full", "optimizer": name, "lr": 1e-2,
                            "warmup": 0.0, "schedule": "constant", "max_steps": 3, "output_dir": str(tmp_path)})
    spec = schema.model_spec(cfg.model)
    args = tasks.training_args(cfg, spec, report_to=[])
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(spec.model_type, **spec.hf_config_kwargs())
    model = transformers.AutoModelForCausalLM.from_config(config)
    trainer = transformers.Trainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    module, cls, eight_bit, paged = OPTIMIZERS[name]
    assert type(optimizer).__module__.startswith(module) and type(optimizer).__name__ == cls
    assert (getattr(getattr(optimizer, "args", None), "optim_bits", 32) == 8) == eight_bit
    assert bool(getattr(optimizer, "is_paged", False)) == paged
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    batch = torch.randint(0, spec.vocab, (4, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(3):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    final = model(input_ids=batch, labels=batch).loss.item()
    assert final < losses[0], (name, losses, final)
    assert models.count_params(model)[0] > 0


@pytest.mark.parametrize("method, lr", [("full", 2e-5), ("lora", 2e-4), ("qlora", 2e-4), ("lora-8bit", 2e-4)])
def test_lr_defaults_by_method(method, lr):
    from ftgrid import schema
    cfg = schema.from_dict({"model": "llama-tiny", "method": method})
    assert cfg.lr == lr and schema.from_dict({"method": method, "lr": 1e-3}).lr == 1e-3
    with pytest.raises(schema.ConfigError, match=rf"min_lr must be in \[0, lr={lr:g}\]"):
        schema.from_dict({"method": method, "min_lr": 1e-2})


def test_dry_run_table_shows_each_cells_lr(tmp_path):
    proc = run([sys.executable, ROOT / "launch" / "grid.py", "--models", "pythia-tiny", "--methods", "full,lora",
                "--dry-run", "--out", tmp_path / "o", "--executor", "local", "--gpu", "cpu"])
    assert proc.returncode == 0, explain(proc)
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.startswith("pythia-tiny_")}
    assert "lr" in next(line for line in proc.stdout.splitlines() if line.startswith("cell")).split()
    assert {cid.split("_")[1]: row[1] for cid, row in rows.items()} == {"full": "2.0e-05", "lora": "2.0e-04"}
