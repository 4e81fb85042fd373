"""The chunked causal-LM loss equals the stock one (loss and gradients) and never holds tokens × vocab logits."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.loss.loss_utils import ForCausalLMLoss

from ftgrid.finetune import losses
from ftgrid.registry import model_spec

TINY_MODELS = ["pythia-tiny", "llama-tiny", "gpt2-tiny"]


def random_case(batch=3, seq=29, hidden=24, vocab=97, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, seq, hidden, generator=g, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g) / hidden ** 0.5).requires_grad_()
    b = torch.randn(vocab, generator=g).requires_grad_() if bias else None
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[torch.rand(batch, seq, generator=g) < 0.3] = -100
    labels[0, :7] = -100  # a prompt
    labels[1, -5:] = -100  # padding
    return h, w, b, labels


def grads(loss, *tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def stock_loss(h, w, b, labels, **kw):
    return ForCausalLMLoss(F.linear(h, w, b), labels, vocab_size=w.shape[0], **kw)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64, 4096])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_equals_stock_loss_and_gradients(chunk_size, bias):
    h, w, b, labels = random_case(bias=bias)
    want = stock_loss(h, w, b, labels)
    got = losses.chunked_lm_loss(h, w, labels, chunk_size=chunk_size, lm_head_bias=b)
    assert got.dtype == torch.float32 and got.shape == ()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g_got, g_want in zip(grads(got, h, w, b), grads(want, h, w, b)):
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_items", [50, torch.tensor(123)])
def test_num_items_in_batch_divides_the_sum(num_items):
    """Gradient accumulation: the Trainer passes the step's target-token count."""
    h, w, _, labels = random_case()
    want = stock_loss(h, w, None, labels, num_items_in_batch=num_items)
    got = losses.chunked_lm_loss(h, w, labels, chunk_size=7, num_items_in_batch=num_items)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g_got, g_want in zip(grads(got, h, w), grads(want, h, w)):
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)
    # the sum itself: count the shifted targets by hand
    n = int((labels[:, 1:] != -100).sum())
    mean = losses.chunked_lm_loss(h, w, labels, chunk_size=7)
    torch.testing.assert_close(got * int(num_items), mean * n, atol=1e-4, rtol=1e-5)


def test_micro_batch_without_targets_adds_nothing():
    """A micro-batch of only prompt/padding (possible under gradient accumulation): zero loss, zero gradient."""
    h, w, _, labels = random_case()
    labels[:] = -100
    got = losses.chunked_lm_loss(h, w, labels, num_items_in_batch=10)
    assert float(got) == 0.0
    assert all(float(g.abs().sum()) == 0.0 for g in grads(got, h, w))
    torch.testing.assert_close(got, stock_loss(h, w, None, labels, num_items_in_batch=10))


def test_shift_labels_frozen_head_and_no_grad():
    h, w, _, labels = random_case()
    w.requires_grad_(False)  # LoRA: the lm_head is frozen, only the hidden states need a gradient
    shifted = losses.shift_targets(labels)
    got = losses.chunked_lm_loss(h, w, None, shift_labels=shifted, chunk_size=8)
    want = stock_loss(h, w, None, labels)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads(got, h)[0], grads(want, h)[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(losses.chunked_lm_loss(h, w, labels, chunk_size=8), want.detach(), atol=1e-5,
                                   rtol=1e-5)


def test_autocast_bf16_matches_stock():
    """Full fine-tuning: fp32 weights under bf16 autocast; matmuls in bf16, gradients in the weights' dtype."""
    h, w, _, labels = random_case(hidden=32, vocab=128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = stock_loss(h, w, None, labels)
        got = losses.chunked_lm_loss(h, w, labels, chunk_size=9)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
    for g_got, g_want, t in zip(grads(got, h, w), grads(want, h, w), (h, w)):
        assert g_got.dtype == t.dtype == torch.float32
        torch.testing.assert_close(g_got, g_want, atol=2e-3, rtol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("use_liger", [False, True])
def test_cuda_bf16_matches_stock(use_liger):
    """On a GPU: the torch chunks and (where installed) Liger's fused kernel against the stock bf16 loss."""
    if use_liger and not losses.liger_available(torch.device("cuda")):
        pytest.skip("liger-kernel not installed")
    h, w, _, labels = random_case(batch=4, seq=300, hidden=256, vocab=5000)
    h = h.detach().cuda().bfloat16().requires_grad_()
    w = w.detach().cuda().bfloat16().requires_grad_()
    labels = labels.cuda()
    want = stock_loss(h, w, None, labels)
    got = losses.chunked_lm_loss(h, w, labels, chunk_size=256, use_liger=use_liger)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
    for g_got, g_want in zip(grads(got, h, w), grads(want, h, w)):
        assert g_got.dtype == torch.bfloat16
        torch.testing.assert_close(g_got.float(), g_want.float(), atol=2e-3, rtol=5e-2)


# ---------------------------------------------------------------------------------------------
# through real tiny models


def tiny_model(name, seed=0):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = model_spec(name)
    config = AutoConfig.for_model(spec.model_type, **spec.hf_config_kwargs(), attn_implementation="sdpa",
                                  pad_token_id=0, bos_token_id=1, eos_token_id=1)
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):  # GPT-2's dropout: training-mode runs must agree
        if hasattr(config, key):
            setattr(config, key, 0.0)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()


def padded_batch(vocab, lengths=(40, 23, 31, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, n // 3:n] = ids[i, n // 3:n]  # response-only loss
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch(vocab, lengths=((40, 23), (31, 12, 20)), seed=1):
    """Rows of several examples: position ids restart per example, no attention mask (as data_prep packs)."""
    g = torch.Generator().manual_seed(seed)
    width = max(sum(r) for r in lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    pos = torch.zeros_like(ids)
    for i, row in enumerate(lengths):
        at = 0
        for n in row:
            ids[i, at:at + n] = torch.randint(1, vocab, (n,), generator=g)
            labels[i, at + 1:at + n] = ids[i, at + 1:at + n]
            pos[i, at:at + n] = torch.arange(n)
            at += n
        pos[i, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "use_cache": False}


def assert_same_grads(model_a, model_b, atol=1e-5):
    a = {n: p.grad for n, p in model_a.named_parameters() if p.requires_grad}
    b = {n: p.grad for n, p in model_b.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and a
    for n in a:
        assert a[n] is not None and b[n] is not None, n
        torch.testing.assert_close(a[n], b[n], atol=atol, rtol=1e-4, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_installed_model_matches_stock(name, layout):
    stock = tiny_model(name)
    ours = losses.install_chunked_loss(copy.deepcopy(stock), chunk_size=16)
    assert losses.has_chunked_loss(ours) and not losses.has_chunked_loss(stock)
    vocab = stock.config.vocab_size
    batch = padded_batch(vocab) if layout == "padded" else packed_batch(vocab)
    want = stock(**batch, num_items_in_batch=torch.tensor(70))
    got = ours(**batch, num_items_in_batch=torch.tensor(70))
    assert got.logits is None  # no (tokens × vocab) tensor leaves the training forward
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
    want.loss.backward()
    got.loss.backward()
    assert_same_grads(ours, stock)
    assert losses.implementation(ours) == "chunked" and losses.implementation(stock) == "stock"
    clone = copy.deepcopy(ours)  # the patched forward follows the copy (a bound method, not a closure)
    assert clone.forward.__self__ is clone and clone._ftgrid_stock_forward.__self__ is clone
    # eval and generation keep the stock forward (logits included)
    ours.eval()
    stock.eval()
    with torch.no_grad():
        e = ours(**batch)
        assert e.logits is not None
        torch.testing.assert_close(e.loss, stock(**batch).loss)


@pytest.mark.parametrize("name", ["pythia-tiny", "llama-tiny"])
def test_peft_wrapped_model_matches_stock(name):
    from peft import LoraConfig, get_peft_model

    spec = model_spec(name)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(spec.linear), task_type="CAUSAL_LM",
                     init_lora_weights=False)  # non-zero B, so every LoRA weight gets a gradient
    torch.manual_seed(1)
    stock = get_peft_model(tiny_model(name), cfg)
    ours = copy.deepcopy(stock)
    assert losses.install_chunked_loss(ours, chunk_size=32) is ours
    batch = padded_batch(stock.config.vocab_size)
    want, got = stock(**batch), ours(**batch)
    assert got.logits is None
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
    want.loss.backward()
    got.loss.backward()
    assert_same_grads(ours, stock)


def test_trainer_with_grad_accumulation_matches_stock(tmp_path):
    """Through the HF Trainer + PEFT: it still passes num_items_in_batch, and the runs are the same."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    def run(chunked):
        torch.manual_seed(2)
        model = get_peft_model(tiny_model("pythia-tiny"), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                      target_modules=["query_key_value"],
                                                                      task_type="CAUSAL_LM"))
        if chunked:
            losses.install_chunked_loss(model, chunk_size=16)
        batches = [padded_batch(model.config.vocab_size, seed=s, lengths=(10 + 7 * s, 33, 5 + s)) for s in range(6)]
        args = TrainingArguments(output_dir=str(tmp_path / str(chunked)), per_device_train_batch_size=1,
                                 gradient_accumulation_steps=2, max_steps=3, learning_rate=1e-2, logging_steps=1,
                                 use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
                                 remove_unused_columns=False, train_sampling_strategy="sequential",
                                 optim="adamw_torch")
        trainer = Trainer(model=model, args=args, train_dataset=batches, data_collator=lambda f: f[0])
        assert trainer.model_accepts_loss_kwargs
        trainer.train()
        logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return logged, weights

    want_losses, want_weights = run(False)
    got_losses, got_weights = run(True)
    assert len(got_losses) == 3
    assert got_losses == pytest.approx(want_losses, abs=1e-5)
    for n in want_weights:
        torch.testing.assert_close(got_weights[n], want_weights[n], atol=1e-5, rtol=1e-4)


def test_unsupported_models_are_refused():
    from transformers import AutoConfig, AutoModelForTokenClassification

    spec = model_spec("pythia-tiny")
    config = AutoConfig.for_model(spec.model_type, **spec.hf_config_kwargs(), num_labels=3)
    classifier = AutoModelForTokenClassification.from_config(config)
    assert "not a causal LM" in losses.unsupported_reason(classifier)
    with pytest.raises(ValueError, match="not supported"):
        losses.install_chunked_loss(classifier)
    model = tiny_model("pythia-tiny")
    assert losses.unsupported_reason(model) is None
    model.config.final_logit_softcapping = 30.0
    assert "softcapping" in losses.unsupported_reason(model)


# ---------------------------------------------------------------------------------------------
# the memory claim, without a GPU: record the largest tensor any op produces


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), str(func)
        return out


def test_no_tensor_of_tokens_times_vocab_in_forward_or_backward():
    model = tiny_model("pythia-tiny")
    vocab = model.config.vocab_size
    batch = padded_batch(vocab, lengths=(96, 96, 96, 96))
    tokens = batch["input_ids"].numel()
    full = tokens * vocab  # 393,216: the stock logits
    chunk = 32
    ours = losses.install_chunked_loss(copy.deepcopy(model), chunk_size=chunk)
    with LargestTensor() as seen:
        ours(**batch).loss.backward()
    assert seen.numel < full / 2, (seen.numel, seen.op)
    # the largest is not logits-sized at all: a weight-sized gradient or the attention scores
    assert seen.numel <= max(chunk * vocab, vocab * model.config.hidden_size, 4 * 4 * 96 * 96), (seen.numel, seen.op)
    # control: the stock forward + backward does produce a tokens × vocab tensor
    with LargestTensor() as stock_seen:
        model(**batch).loss.backward()
    assert stock_seen.numel >= full, (stock_seen.numel, stock_seen.op)
