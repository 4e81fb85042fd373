"""Methods and training mechanics: QLoRA / 8-bit LoRA on CPU, token-normalised gradient accumulation,
NEFTune (packing: test_train.py). Each trains a tiny cell in a fresh process, as every launcher does."""
import pytest
from safetensors.torch import load_file

from cells import explain, losses, make_cell, metrics, train


def expected_llama_tiny_params(rank: int) -> tuple[int, int]:
    """(LoRA params on all linear layers, base params) of llama-tiny, counted from its architecture."""
    from ftgrid import schema as config
    spec = config.model_spec("llama-tiny")
    h, ffn, layers, vocab = spec.hidden, spec.ffn, spec.layers, spec.vocab
    kv = spec.kv_heads * h // spec.heads
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, ffn), (h, ffn), (ffn, h)]  # q k v o gate up down
    lora = layers * sum(rank * (i + o) for i, o in shapes)
    base = layers * (sum(i * o for i, o in shapes) + 2 * h) + 2 * vocab * h + h  # + norms, embed, head, final
    return lora, base


@pytest.mark.parametrize("method, layer", [("qlora", "Linear4bit"), ("lora-8bit", "Linear8bitLt")])
def test_quantized_lora_trains_on_cpu(tmp_path, method, layer):
    cell = tmp_path / method
    proc = train(make_cell(cell, model="llama-tiny", method=method, max_steps=30, num_samples=0))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["quantized_layers"] == {layer: 2 * 7}  # every linear layer of both blocks; lm_head kept
    lora, base = expected_llama_tiny_params(rank=8)
    assert m["trainable_params"] == lora and m["total_params"] == lora + base  # 4-bit packing not miscounted
    assert m["eval_loss"] < m["initial_eval_loss"] - 0.05, m
    assert m["train_loss_last"] < m["train_loss_first"]
    weights = load_file(cell / "adapter" / "adapter_model.safetensors")
    assert all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)


@pytest.fixture(scope="module")
def micro8(tmp_path_factory):
    """Baseline: micro batch 8, no accumulation, a loss logged every step, no dropout."""
    cell = tmp_path_factory.mktemp("ga") / "micro8"
    proc = train(make_cell(cell, micro_batch=8, grad_accum=1, max_steps=10, logging_steps=1, lora_dropout=0.0,
                           num_samples=0))
    assert proc.returncode == 0, explain(proc)
    return metrics(cell)


def test_accumulation_normalises_by_tokens(tmp_path, micro8):
    """4 micro-batches of 2 = one batch of 8: the same loss at every step. Rows differ in length, so
    averaging per-micro-batch means (the classic accumulation bug) would not give this."""
    cell = tmp_path / "micro2x4"
    proc = train(make_cell(cell, micro_batch=2, grad_accum=4, max_steps=10, logging_steps=1, lora_dropout=0.0,
                           num_samples=0))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["global_batch"] == micro8["global_batch"] == 8 and m["tokens"] == micro8["tokens"]
    assert len(losses(m)) == len(losses(micro8)) == 10
    assert losses(m) == pytest.approx(losses(micro8), rel=1e-5)
    # The eval loss is a mean over eval tokens too, so the eval batch size (= micro batch) does not move it.
    assert m["initial_eval_loss"] == pytest.approx(micro8["initial_eval_loss"], rel=1e-6)
    assert m["eval_loss"] == pytest.approx(micro8["eval_loss"], rel=1e-5)
    assert losses(micro8)[-1] < losses(micro8)[0]


def test_neftune_noises_training_embeddings_only(tmp_path, micro8):
    cell = tmp_path / "neftune"
    proc = train(make_cell(cell, micro_batch=8, grad_accum=1, max_steps=10, logging_steps=1, lora_dropout=0.0,
                           num_samples=0, neftune_alpha=5.0))
    assert proc.returncode == 0, explain(proc)
    m = metrics(cell)
    assert m["initial_eval_loss"] == pytest.approx(micro8["initial_eval_loss"], rel=1e-7)  # eval: no noise
    assert abs(losses(m)[0] - losses(micro8)[0]) > 1e-3  # step 1, same weights: only the noise differs
    assert m["eval_loss"] < m["initial_eval_loss"]

