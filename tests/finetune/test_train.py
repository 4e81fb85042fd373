"""The entrypoint trains a tiny cell for real and records what happened."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from cells import TRAIN_PY, explain, make_cell, metrics, run, status, train


def test_lora_cell_trains_and_records_metrics(trained_cell):
    cell, _ = trained_cell
    m = metrics(cell)
    assert m["eval_loss"] < m["initial_eval_loss"] - 0.05, m  # learned something measurable
    assert m["train_loss_last"] < m["train_loss_first"] and m["train_loss_min"] <= m["train_loss_last"]
    assert m["steps"] == 30 and m["world_size"] == 1 and m["global_batch"] == 8
    assert 0 < m["trainable_params"] < m["total_params"]
    assert m["tokens"] > 30 * 8 * 5 and m["peak_memory_gib"] > 0.1 and m["peak_memory_kind"] == "cpu_max_rss"
    assert m["tokens_per_second"] == pytest.approx(m["tokens"] / m["train_seconds"])
    assert abs(m["perplexity"] - torch.exp(torch.tensor(m["eval_loss"])).item()) < 1e-3 * m["perplexity"]
    assert m["task"] == "sft" and m["deepspeed"] is None and m["quantized_layers"] == {}
    assert set(m["phase_seconds"]) == {"setup", "train", "save", "generate"}
    st = status(cell)
    assert st["state"] == "done" and [h["state"] for h in st["history"]] == ["running", "done"]
    # The adapter was saved and is not empty: LoRA B matrices start at zero and must have moved.
    weights = load_file(cell / "adapter" / "adapter_model.safetensors")
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)
    assert not list(cell.glob(".*.tmp")), "atomic writes leave no temp files"
    # samples.jsonl: greedy generations for the first eval prompts, bounded, cut at eos.
    samples = [json.loads(line) for line in (cell / "samples.jsonl").read_text().splitlines()]
    assert [s["index"] for s in samples] == [0, 1, 2, 3] and m["samples"] == 4
    for s in samples:
        assert s["prompt"].startswith("<|user|>\n") and s["prompt"].endswith("<|assistant|>\n")
        assert s["reference"].endswith("<|endoftext|>")
        assert 0 <= s["new_tokens"] <= 12 and "<|endoftext|>" not in s["generation"]
        assert s["stopped_at_eos"] or s["new_tokens"] == 12


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path):
    cell = tmp_path / "bad"
    yaml_path = make_cell(cell, rank=-1)
    proc = train(yaml_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: rank must be a positive integer, got -1"
    assert sorted(p.name for p in cell.iterdir()) == ["cell.yaml"]


def test_a_dataset_of_another_task_is_refused_before_any_model_loads(tmp_path):
    cell = tmp_path / "mismatch"
    proc = train(make_cell(cell, model="llama-tiny", task="dpo"))  # wordnet is instruction data
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: dataset 'wordnet' is a sft dataset, but the task is 'dpo'"
    assert sorted(p.name for p in cell.iterdir()) == ["cell.yaml"]


def test_one_off_run_from_flags(tmp_path):
    out = tmp_path / "one-off"
    proc = run([sys.executable, TRAIN_PY, "--model", "gpt2-tiny", "--rank", "4", "--max-steps", "3",
                "--seq-len", "64", "--eval-rows", "16", "--num-samples", "0", "--wandb-mode", "online",
                "--out", out], WANDB_MODE="disabled")
    assert proc.returncode == 0, explain(proc)
    assert metrics(out)["model"] == "gpt2-tiny" and metrics(out)["steps"] == 3
    assert "model: gpt2-tiny" in (out / "resolved.yaml").read_text()
    assert not (out / "samples.jsonl").exists()
    # WANDB_MODE=disabled in the environment wins over the run's own wandb_mode
    assert metrics(out)["wandb_mode"] == "disabled" and not (out / "wandb").exists()


def test_a_crash_is_recorded_as_failed_with_the_reason(tmp_path):
    cell = tmp_path / "crash"
    proc = train(make_cell(cell, dataset=str(tmp_path / "missing.jsonl")))
    assert proc.returncode == 2 and "data file not found" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama-tiny", "gpt2-tiny"])
def test_full_finetune_of_two_families(tmp_path, model):
    cell = tmp_path / f"full-{model}"
    proc = train(make_cell(cell, model=model, method="full", rank=None, lr=1e-3, max_steps=20, num_samples=0))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["trainable_params"] == m["total_params"]
    assert m["eval_loss"] < m["initial_eval_loss"] - 0.1, m
    assert m["train_loss_last"] < m["train_loss_first"]
    assert (cell / "model" / "model.safetensors").exists() and not (cell / "adapter").exists()


@pytest.mark.slow
def test_out_of_memory_is_status_oom_with_step_and_peak_and_exit_3(tmp_path):
    """Out of memory on CPU: the data segment capped a little above the import baseline (as
    launch.probe does), then a micro batch whose logits alone exceed the cap."""
    import subprocess
    from ftgrid.launch.probe import baseline_data_bytes
    from cells import CEILING_S, ROOT, clean_env
    cell = make_cell(tmp_path / "oom", micro_batch=256, seq_len=512, max_steps=3, num_samples=0)
    limit_kib = (baseline_data_bytes() + int(0.25 * 2**30)) // 1024
    proc = subprocess.run(["bash", "-c", f"ulimit -d {limit_kib}; exec {sys.executable} {TRAIN_PY} --cell {cell}"],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=CEILING_S)
    assert proc.returncode == 3, explain(proc)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: out of memory in oom: ")
    assert "Traceback" not in proc.stderr  # one line, no traceback wall
    st = status(tmp_path / "oom")
    assert st["state"] == "oom" and st["phase"] == "train" and st["step"] == 0
    assert st["peak_memory_gib"] > 0.1 and st["peak_memory_kind"] == "cpu_max_rss"
    assert "can't allocate memory" in st["error"]
    assert not (tmp_path / "oom" / "metrics.json").exists()


def test_packing_is_on_by_default_and_trains_exactly_like_unpacked(tmp_path):
    """Full-batch steps (micro batch x accumulation covers the whole tier), so both layouts see the same
    examples in every step: the per-step losses, the tokens counted and the final eval loss must agree.
    Packed rows carry several examples each (position ids reset, no cross-example attention); samples are
    generated from the unpacked eval prompts."""
    steps = dict(micro_batch=32, grad_accum=13, epochs=2, max_steps=-1, lora_dropout=0.0, num_samples=0,
                 logging_steps=1, eval_rows=64, warmup=0.0)
    packed, plain = tmp_path / "packed", tmp_path / "plain"
    for cell, extra in ((packed, {"num_samples": 2, "max_new_tokens": 8}), (plain, {"packing": "none"})):
        proc = train(make_cell(cell, **{**steps, **extra}))
        assert proc.returncode == 0, explain(proc)
    p, u = metrics(packed), metrics(plain)
    assert p["packing"] == "bfd" and u["packing"] == "none"  # the default packs
    assert u["sampling"] == "group_by_length" and p["sampling"] == "random"
    assert p["optimizer_impl"] == u["optimizer_impl"] == "adamw_torch_fused"
    assert p["data"]["packed_rows"] < 0.6 * p["data"]["train_rows"] and p["data"]["train_rows"] == u["data"]["train_rows"]
    assert p["steps"] == u["steps"] == 2
    assert p["tokens"] == u["tokens"] > 0
    losses = lambda m: [h["loss"] for h in m["history"] if "loss" in h]  # noqa: E731
    assert len(losses(p)) == 2 and losses(p) == pytest.approx(losses(u), abs=1e-4)
    assert losses(p)[-1] < losses(p)[0] and p["eval_loss"] < p["initial_eval_loss"]
    assert (packed / "samples.jsonl").read_text().count("\n") == 2
    assert p["eval_loss"] == pytest.approx(u["eval_loss"], abs=1e-4)
    assert p["initial_eval_loss"] == pytest.approx(u["initial_eval_loss"], abs=1e-6)
    print(f"\npacked {p['data']['packed_rows']} rows vs {u['data']['train_rows']} examples; losses "
          f"{losses(p)} vs {losses(u)}")


def _scheduled_steps(steps: int, warmup_steps: int):
    """A Trainer's state after `steps` optimizer steps under the linear warmup schedule it builds."""
    import types
    import transformers
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup_steps, max(steps, 1))
    return types.SimpleNamespace(state=types.SimpleNamespace(global_step=steps), lr_scheduler=scheduler)


def test_a_one_step_warmup_run_keeps_a_zero_adapter_and_that_is_no_failure(tmp_path):
    """The first warmup step runs at learning rate 0: one step leaves LoRA B at zero, rightly; once a step ran
    at a rate above zero, an all-zero LoRA B (a ZeRO-3 save without gathering) is an error."""
    from safetensors.torch import save_file
    from ftgrid.finetune import train as entry
    assert not entry.took_a_step(_scheduled_steps(1, warmup_steps=1))
    assert entry.took_a_step(_scheduled_steps(1, warmup_steps=0))
    assert entry.took_a_step(_scheduled_steps(2, warmup_steps=1))
    assert not entry.took_a_step(_scheduled_steps(0, warmup_steps=0))
    save_file({"base_model.model.x.lora_A.weight": torch.ones(2, 4), "base_model.model.x.lora_B.weight":
               torch.zeros(4, 2)}, str(tmp_path / "adapter_model.safetensors"))
    entry.check_adapter(tmp_path, must_have_moved=False)
    with pytest.raises(RuntimeError, match="is empty or zero: \\['base_model.model.x.lora_B.weight'\\]"):
        entry.check_adapter(tmp_path)
    save_file({"base_model.model.x.lora_B.weight": torch.zeros(0)}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(RuntimeError, match="is empty or zero"):  # empty is never right
        entry.check_adapter(tmp_path, must_have_moved=False)
