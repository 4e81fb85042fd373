"""The four tasks end to end on tiny models (DPO, token classification, summarization; SFT is in
test_train.py), and their metric functions on inputs with known answers."""
import json
import math

import numpy as np
import pytest
from safetensors.torch import load_file

from cells import explain, make_cell, metrics, train


def test_dpo_trains_against_the_reference_and_reports_rewards(tmp_path):
    cell = tmp_path / "dpo"
    proc = train(make_cell(cell, model="llama-tiny", task="dpo", dataset="pairs:small", max_steps=20,
                           dpo_beta=0.1))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    # At step 0 the policy IS the reference (LoRA B = 0): every margin is 0 and the loss is ln 2.
    assert m["initial_eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert m["initial_task_metrics"]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    t = m["task_metrics"]
    assert set(t) >= {"reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected",
                      "train_reward_accuracy", "train_reward_margin"}
    assert 0 <= t["reward_accuracy"] <= 1
    assert t["reward_margin"] == pytest.approx(t["reward_chosen"] - t["reward_rejected"], abs=1e-5)
    assert t["train_reward_margin"] > 0 and t["train_reward_accuracy"] > 0.5  # it learned the preference
    assert m["train_loss_last"] < m["train_loss_first"] and m["perplexity"] is None
    assert not (cell / "samples.jsonl").exists()


@pytest.mark.parametrize("model, head", [("roberta-tiny", "classifier"), ("llama-tiny", "score")])
def test_token_classification_with_an_encoder_and_a_decoder_head(tmp_path, model, head):
    cell = tmp_path / model
    proc = train(make_cell(cell, model=model, task="token-classification", dataset="pii-sample:small",
                           max_steps=30))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    t, t0 = m["task_metrics"], m["initial_task_metrics"]
    assert set(t) == {"precision", "recall", "f1", "accuracy"} and all(0 <= v <= 1 for v in t.values())
    assert m["eval_loss"] < m["initial_eval_loss"] - 0.5, m
    assert t["accuracy"] > t0["accuracy"] + 0.2  # mostly "O" tags, learned
    # The new head trains and is saved with the adapter (PEFT's modules_to_save).
    weights = load_file(cell / "adapter" / "adapter_model.safetensors")
    assert f"base_model.model.{head}.weight" in weights
    labels = json.loads((cell / "base" / "config.json").read_text())["id2label"]
    assert "O" in labels.values() and any(v.startswith("B-") for v in labels.values())


def test_summarization_with_an_encoder_decoder(tmp_path):
    cell = tmp_path / "bart"
    proc = train(make_cell(cell, model="bart-tiny", task="summarization", dataset="xsum-sample:small",
                           seq_len=256, max_steps=30, max_new_tokens=16))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert set(m["task_metrics"]) == {"rouge1", "rouge2", "rougeL"}
    assert all(0 <= v <= 1 for v in m["task_metrics"].values())
    assert m["eval_loss"] < m["initial_eval_loss"] - 0.05, m
    generated = [h["eval_gen_tokens_mean"] for h in m["history"] if "eval_gen_tokens_mean" in h]
    assert generated and all(0 <= g <= 16 for g in generated)  # generation really ran, bounded


def test_summarization_with_a_prompted_decoder(tmp_path):
    cell = tmp_path / "decoder"
    proc = train(make_cell(cell, model="llama-tiny", task="summarization", dataset="xsum-sample:small",
                           seq_len=256, max_steps=30, max_new_tokens=24, num_samples=3))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert set(m["task_metrics"]) == {"rouge1", "rouge2", "rougeL"}
    assert m["task_metrics"]["rouge1"] > 0.05, m["task_metrics"]  # the shared phrasing is picked up
    assert m["task_metrics"]["rougeL"] <= m["task_metrics"]["rouge1"] + 1e-9
    assert m["eval_loss"] < m["initial_eval_loss"] - 0.1, m
    samples = [json.loads(line) for line in (cell / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(s["reference"] and s["new_tokens"] <= 24 for s in samples)


# --- metric functions ----------------------------------------------------------------------------


def test_seqeval_metrics_on_known_predictions():
    from transformers import EvalPrediction
    from ftgrid.finetune import tasks
    names = ["O", "B-NAME", "I-NAME"]
    labels = np.array([[-100, 1, 2, 0, -100], [-100, 0, 1, 0, 0]])
    right = np.eye(3)[np.where(labels < 0, 0, labels)]                  # logits that pick the label
    wrong = right.copy()
    wrong[1, 2] = np.eye(3)[0]                                          # miss the second entity
    perfect = tasks.seqeval_metrics(names)(EvalPrediction(right, labels))
    assert perfect == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    half = tasks.seqeval_metrics(names)(EvalPrediction(wrong, labels))
    assert half["recall"] == 0.5 and half["precision"] == 1.0 and half["accuracy"] == pytest.approx(6 / 7)


def test_rouge_and_the_seq2seq_metric_strip_padding():
    from transformers import AutoTokenizer, EvalPrediction
    from ftgrid.finetune import tasks
    from ftgrid.registry import TINY_TOKENIZER_DIR
    assert tasks.rouge(["the cat sat"], ["the cat sat"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert tasks.rouge(["dog"], ["the cat sat"])["rouge1"] == 0.0
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    ids = tok("the cat sat", add_special_tokens=False)["input_ids"]
    pad, eos = tok.pad_token_id, tok.eos_token_id
    generated = np.array([[eos] + ids + [eos, pad, pad]])                 # decoder start, text, eos, padding
    labels = np.array([ids + [eos] + [-100] * 3])
    out = tasks.seq2seq_rouge_metrics(tok, None)(EvalPrediction(generated, labels))
    assert out["rouge1"] == 1.0 and out["gen_tokens_mean"] == len(ids)


def test_token_loss_is_a_mean_over_the_steps_tokens():
    import torch
    from ftgrid.finetune import tasks
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 2], [4, 0, -100]])
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), labels.reshape(-1), reduction="none")
    total = per_token[labels.reshape(-1) != -100].sum()
    assert tasks.token_loss({"logits": logits}, labels).item() == pytest.approx((total / 4).item(), rel=1e-6)
    # Inside an accumulation of 10 target tokens in all, this micro-batch contributes its sum / 10.
    assert tasks.token_loss({"logits": logits}, labels, num_items_in_batch=torch.tensor(10)).item() == \
        pytest.approx((total / 10).item(), rel=1e-6)


def test_rouge_partial_overlap_matches_hand_computation():
    from ftgrid.finetune import tasks
    out = tasks.rouge(["the cat sat"], ["the cat sat down"])
    # unigrams: P = 3/3, R = 3/4 -> F = 2PR/(P+R); bigrams: P = 2/2, R = 2/3; LCS = 3 words
    assert out["rouge1"] == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert out["rouge2"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert out["rougeL"] == pytest.approx(2 * 1 * 0.75 / 1.75)
