"""The entrypoint trains a tiny cell for real and records what happened."""
import sys

import pytest
import torch
from safetensors.torch import load_file

from cells import TRAIN_PY, explain, make_cell, metrics, run, status, train


def test_lora_cell_trains_and_records_metrics(tmp_path):
    cell = tmp_path / "cell-a"
    proc = train(make_cell(cell))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["eval_loss"] < m["initial_eval_loss"] - 0.05, m  # learned something measurable
    assert m["train_loss_last"] < m["train_loss_first"]
    assert m["steps"] == 30 and m["world_size"] == 1 and m["global_batch"] == 8
    assert 0 < m["trainable_params"] < m["total_params"]
    assert m["tokens"] > 30 * 8 * 5 and m["peak_memory_gib"] > 0.1
    assert abs(m["perplexity"] - torch.exp(torch.tensor(m["eval_loss"])).item()) < 1e-3 * m["perplexity"]
    st = status(cell)
    assert st["state"] == "done" and [h["state"] for h in st["history"]] == ["running", "done"]
    # The adapter was saved and is not empty: LoRA B matrices start at zero and must have moved.
    weights = load_file(cell / "adapter" / "adapter_model.safetensors")
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(w.abs().sum() > 0 for w in lora_b)
    assert not list(cell.glob(".*.tmp")), "atomic writes leave no temp files"


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path):
    cell = tmp_path / "bad"
    yaml_path = make_cell(cell, rank=-1)
    proc = train(yaml_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: rank must be a positive integer, got -1"
    assert sorted(p.name for p in cell.iterdir()) == ["cell.yaml"]


def test_one_off_run_from_flags(tmp_path):
    out = tmp_path / "one-off"
    proc = run([sys.executable, TRAIN_PY, "--model", "gpt2-tiny", "--rank", "4", "--max-steps", "3",
                "--seq-len", "64", "--eval-rows", "16", "--out", out])
    assert proc.returncode == 0, explain(proc)
    assert metrics(out)["model"] == "gpt2-tiny" and metrics(out)["steps"] == 3
    assert "model: gpt2-tiny" in (out / "resolved.yaml").read_text()


def test_a_crash_is_recorded_as_failed_with_the_reason(tmp_path):
    cell = tmp_path / "crash"
    proc = train(make_cell(cell, dataset=str(tmp_path / "missing.jsonl")))
    assert proc.returncode == 2 and "data file not found" in proc.stderr


@pytest.mark.slow
def test_full_finetune_of_a_second_family(tmp_path):
    cell = tmp_path / "full"
    proc = train(make_cell(cell, model="llama-tiny", method="full", rank=None, lr=1e-3, max_steps=20))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["trainable_params"] == m["total_params"]
    assert m["eval_loss"] < m["initial_eval_loss"]
    assert (cell / "model" / "model.safetensors").exists()
