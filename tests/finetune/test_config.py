"""The run config schema: defaults, coercion, one-line errors, cell.yaml round trip."""
import pytest

from ftgrid import schema as config
from ftgrid.errors import ConfigError


def test_defaults_resolve_lora_rank_and_alpha():
    cfg = config.from_dict({"model": "pythia-tiny"})
    assert (cfg.method, cfg.rank, cfg.alpha) == ("lora", 16, 32.0)
    full = config.from_dict({"model": "pythia-tiny", "method": "full"})
    assert full.rank is None and full.alpha is None


def test_round_trip_through_cell_yaml(tmp_path):
    cfg = config.from_dict({"model": "llama-tiny", "rank": 4, "lr": "3e-4", "grad_ckpt": "true",
                            "target_modules": "q_proj,v_proj"})
    (tmp_path / "cell.yaml").write_text(config.dump(cfg))
    back = config.load(tmp_path / "cell.yaml")
    assert back.lr == 3e-4 and back.grad_ckpt is True and back.target_modules == ["q_proj", "v_proj"]
    assert back.output_dir == str(tmp_path)  # an empty output_dir means the cell.yaml's folder


def test_relative_deepspeed_path_resolves_against_the_cell_folder(tmp_path):
    (tmp_path / "ds_config.json").write_text("{}")
    (tmp_path / "cell.yaml").write_text("model: pythia-tiny\ndeepspeed: ds_config.json\n")
    assert config.load(tmp_path / "cell.yaml").deepspeed == str(tmp_path / "ds_config.json")


@pytest.mark.parametrize("data, message", [
    ({"modle": "pythia-tiny"}, "unknown config key 'modle' (did you mean 'model'?)"),
    ({"model": "gpt5"}, "unknown model 'gpt5'"),
    ({"lr": "fast"}, "lr: 'fast' is not a valid float"),
    ({"micro_batch": 0}, "micro_batch must be positive, got 0"),
    ({"micro_batch": 2.5}, "micro_batch: 2.5 is not a valid int"),
    ({"method": "full", "rank": 8}, "method 'full' takes no LoRA rank/alpha"),
    ({"model": "pythia-tiny", "init": "pretrained"}, "has no pretrained weights"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"warmup": 1.5}, "warmup is a fraction"),
    ({"deepspeed": "/nonexistent/ds.json"}, "deepspeed config not found"),
    ({"task": "summarise"}, "unknown task 'summarise' (did you mean 'summarization'?)"),
    ({"model": "roberta-tiny", "task": "sft"}, "task 'sft' does not run on roberta-tiny (encoder); encoder models run: token-classification"),
    ({"model": "bart-tiny", "task": "dpo"}, "task 'dpo' does not run on bart-tiny (seq2seq): TRL's DPOTrainer"),
    ({"model": "bart-tiny", "task": "sft"}, "task 'sft' does not run on bart-tiny (seq2seq): sft is a causal-LM"),
    ({"model": "roberta-tiny", "task": "sft"}, "encoder models run: token-classification"),
    ({"task": "dpo", "packing": "bfd"}, "packing applies to causal sft and summarization, not 'dpo'"),
    ({"model": "bart-tiny", "task": "summarization", "packing": True}, "packing applies to causal"),
    ({"packing": "zip"}, "unknown packing 'zip'"),
    ({"model": "roberta-tiny", "task": "token-classification", "neftune_alpha": 5},
     "neftune_alpha applies to generative SFT"),
    ({"neftune_alpha": -1}, "neftune_alpha must be in [0, 100]"),
    ({"task": "dpo", "dpo_beta": 0}, "dpo_beta must be positive, got 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be positive"),
    ({"num_samples": -1}, "num_samples must be >= 0"),
    ({"eval_every": -5}, "eval_every must be >= 0"),
    ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
    ({"max_grad_norm": -1}, "max_grad_norm must be >= 0"),
])
def test_invalid_configs_fail_before_any_model_is_built(data, message):
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_registry_entries_are_consistent():
    reg = config.registry()
    for name in ("pythia-70m", "pythia-12b", "mistral-7b", "mixtral-8x7b", "gpt2-medium", "llama-2-70b",
                 "roberta-large", "bart-large", "blenderbot-400m"):
        assert not reg[name].is_tiny
    tiny = [n for n in reg if n.endswith("-tiny")]
    assert sorted(tiny) == ["bart-tiny", "gpt2-tiny", "llama-tiny", "mistral-tiny", "mixtral-tiny",
                            "pythia-tiny", "roberta-tiny"]
    assert reg["mixtral-8x7b"].zero3_leaf_modules == ("MixtralSparseMoeBlock",)
    kwargs = reg["pythia-1.4b"].hf_config_kwargs()
    assert kwargs["num_hidden_layers"] == 24 and kwargs["hidden_size"] == 2048 and kwargs["rotary_pct"] == 0.25
    assert reg["blenderbot-400m"].hf_config_kwargs()["encoder_layers"] == 2
    assert reg["blenderbot-400m"].hf_config_kwargs()["decoder_layers"] == 12


def test_task_fields_and_their_defaults():
    cfg = config.from_dict({"model": "llama-tiny", "task": "dpo", "dpo_beta": "0.25"})
    assert (cfg.task, cfg.dpo_beta, cfg.packing, cfg.neftune_alpha) == ("dpo", 0.25, "auto", 0.0)
    # auto packs exactly where packing is exact: a causal model's sft/summarization loss
    assert cfg.effective_packing() == "none"
    assert config.from_dict({"model": "llama-tiny"}).effective_packing() == "bfd"
    assert config.from_dict({"model": "gpt2-tiny", "task": "summarization"}).effective_packing() == "bfd"
    assert config.from_dict({"model": "bart-tiny", "task": "summarization"}).effective_packing() == "none"
    assert config.from_dict({"model": "roberta-tiny", "task": "token-classification"}).effective_packing() == "none"
    assert config.from_dict({"model": "llama-tiny", "packing": "none"}).effective_packing() == "none"
    assert config.from_dict({"packing": True}).packing == "bfd"  # packing: true = bin packing
    assert config.from_dict({"packing": "false"}).packing == "none"
    assert config.from_dict({"packing": "flatten", "task": "summarization"}).packing == "flatten"
    assert config.from_dict({"model": "roberta-tiny", "task": "token-classification"}).task == "token-classification"
    assert config.from_dict({"model": "bart-tiny", "task": "summarization", "max_new_tokens": 32}).max_new_tokens == 32


def test_kernel_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys, ftgrid.schema, ftgrid.registry, ftgrid.cli, ftgrid.rundir, ftgrid.launch.spec; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("mode, env, expected", [
    ("disabled", {"WANDB_MODE": "online", "WANDB_API_KEY": "k"}, "disabled"),  # off unless the config turns it on
    ("offline", {}, "offline"),
    ("online", {}, "offline"),                                  # no credentials: offline, never a hang
    ("online", {"WANDB_API_KEY": "k"}, "online"),
    ("online", {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),  # the environment wins
    ("offline", {"WANDB_MODE": "disabled"}, "disabled"),
    ("offline", {"WANDB_MODE": "online", "WANDB_API_KEY": "k"}, "online"),
    ("offline", {"WANDB_MODE": "dryrun"}, "offline"),
])
def test_effective_wandb_mode(mode, env, expected, tmp_path):
    cfg = config.from_dict({"wandb_mode": mode})
    assert config.effective_wandb_mode(cfg, {"HOME": str(tmp_path), **env}) == expected


def test_a_netrc_login_counts_as_credentials(tmp_path):
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    cfg = config.from_dict({"wandb_mode": "online"})
    assert config.effective_wandb_mode(cfg, {"HOME": str(tmp_path)}) == "online"


def test_a_bad_wandb_mode_in_the_environment_is_one_line():
    with pytest.raises(ConfigError, match="WANDB_MODE='onlin' in the environment"):
        config.effective_wandb_mode(config.from_dict({"wandb_mode": "online"}), {"WANDB_MODE": "onlin"})


def test_familiar_names_are_aliases_or_refused_with_ours():
    cfg = config.from_dict({"learning_rate": 1e-4, "per_device_train_batch_size": 4, "gradient-accumulation-steps": 2,
                            "num_train_epochs": 3, "lora_r": 8, "lora_alpha": 16, "optim": "paged_adamw_8bit"})
    assert (cfg.lr, cfg.micro_batch, cfg.grad_accum, cfg.epochs, cfg.rank, cfg.alpha, cfg.optimizer) == \
        (1e-4, 4, 2, 3.0, 8, 16.0, "paged-adamw-8bit")
    with pytest.raises(config.ConfigError, match="ours is warmup, a fraction"):
        config.from_dict({"warmup_steps": 10})
    with pytest.raises(config.ConfigError, match="resuming is automatic"):
        config.from_dict({"resume_from_checkpoint": True})
    with pytest.raises(config.ConfigError, match="given twice"):
        config.from_dict({"lr": 1e-4, "learning_rate": 2e-4})


def test_only_quantized_methods_and_8bit_optimizers_load_bitsandbytes():
    """train.py keeps bitsandbytes (slow to import) out of every other run."""
    from ftgrid.schema import RunConfig
    assert RunConfig(model="pythia-tiny", method="qlora").uses_bitsandbytes
    assert RunConfig(model="pythia-tiny", method="lora-8bit").uses_bitsandbytes
    assert RunConfig(model="pythia-tiny", optimizer="paged-adamw-8bit").uses_bitsandbytes
    assert not RunConfig(model="pythia-tiny", method="lora").uses_bitsandbytes
    assert not RunConfig(model="pythia-tiny", method="full", optimizer="adafactor").uses_bitsandbytes
