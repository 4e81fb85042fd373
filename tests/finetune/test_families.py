"""Every tiny causal family learns with LoRA (pythia: test_train.py; llama: test_tasks.py and
test_methods.py; roberta and bart: test_tasks.py)."""
import pytest

from cells import explain, make_cell, metrics, train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["gpt2-tiny", "mistral-tiny", "mixtral-tiny"])
def test_lora_loss_falls_for_each_causal_family(tmp_path, model):
    cell = tmp_path / model
    proc = train(make_cell(cell, model=model, max_steps=30, num_samples=0))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["eval_loss"] < m["initial_eval_loss"] - 0.05, m
    assert m["train_loss_last"] < m["train_loss_first"]
    assert 0 < m["trainable_params"] < m["total_params"] / 5
    assert m["zero3_leaf_modules"] == []  # leaves are a ZeRO-3 matter only
