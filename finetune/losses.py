"""Causal-LM cross-entropy that never holds the (tokens × vocab) logits.

The stock Hugging Face loss runs the lm_head over every position, upcasts the logits to fp32 and keeps
them for the backward: pythia-1.4b at 16 × 1024 tokens is 0.8 G logits, several GiB (bf16 logits, fp32
copy, fp32 gradient). Here the logits exist one chunk of rows at a time:

    loss = chunked_lm_loss(hidden_states, lm_head.weight, labels, num_items_in_batch=n)

- Only positions that have a target get logits (prompt tokens, padding and row ends cost nothing).
- Each chunk's logits give its loss and, in the same pass, its gradients w.r.t. the hidden states and the
  lm_head weight/bias (softmax − one-hot): the backward only scales them by the incoming gradient. That is
  three (rows × vocab × hidden) matmuls, as in the stock loss, instead of four when the backward recomputes
  the logits; memory is O(chunk × vocab) plus the gradients themselves (hidden-sized, weight-sized).
- On CUDA with `liger-kernel` installed, Liger's fused linear cross-entropy (Triton) does the same.

Semantics are HF's `ForCausalLMLoss`: labels are shifted (position t is scored against labels[t+1]),
`ignore_index` positions are skipped, the sum is divided by `num_items_in_batch` when given (the Trainer's
target-token count of the whole optimizer step), else by this batch's target count.

`install_chunked_loss(model)` makes a HF causal LM (PEFT-wrapped or not) compute its training loss this
way: in training mode with labels, its forward runs the decoder, applies this loss to the last hidden
state and returns `.loss` with `logits=None`. Eval, generation and calls without labels are untouched.
"""
from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F

from ftgrid.execution import loss_fallback

IGNORE_INDEX = -100
LOSS_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")  # consumed here, not by the decoder


def shift_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """HF's causal shift: position t predicts labels[t+1]; the last position of each row predicts nothing."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def liger_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except Exception:  # not installed, or no Triton for this GPU
        return False
    return True


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of cross_entropy(hidden @ weight.T + bias, targets), chunk by chunk; every target valid."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        device = hidden.device.type
        # Under autocast (full fine-tuning: fp32 weights, bf16 compute) the matmuls run in the autocast dtype.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(device, enabled=False):
            for start in range(0, hidden.shape[0], chunk_size):
                h = hidden[start:start + chunk_size].to(dtype)
                t = targets[start:start + chunk_size]
                logits = (h @ w.T if b is None else torch.addmm(b, h, w.T)).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if not (need_h or need_w or need_b):
                    continue
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad = grad.to(dtype)
                if need_h:
                    grad_h[start:start + chunk_size] = grad @ w
                if need_w:
                    grad_w += (grad.T @ h).float()
                if need_b:
                    grad_b += grad.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grads = [None if g is None else (g * grad_total).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None)


@torch.compiler.disable  # a data-dependent row selection and a Python loop: keep it out of compiled graphs
def chunked_lm_loss(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor | None, *,
                    chunk_size: int = 1024, ignore_index: int = IGNORE_INDEX, num_items_in_batch=None,
                    lm_head_bias: torch.Tensor | None = None, shift_labels: torch.Tensor | None = None,
                    use_liger: bool | None = None) -> torch.Tensor:
    """Causal-LM loss of `hidden_states` (..., hidden) through the lm_head (vocab, hidden) against `labels`
    (...), shifted as HF does (or `shift_labels`, already shifted). Returns an fp32 scalar."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = shift_labels if shift_labels is not None else shift_targets(labels, ignore_index)
    targets = targets.reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    rows = (targets != ignore_index).nonzero().squeeze(1)
    hidden, targets = hidden[rows], targets[rows]
    if use_liger is None:
        use_liger = liger_available(hidden.device)
    if use_liger and rows.numel():
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        total = liger_fused_linear_cross_entropy(hidden, lm_head_weight, targets, bias=lm_head_bias,
                                                 ignore_index=ignore_index, reduction="sum").float()
    else:
        total = _LinearCrossEntropy.apply(hidden, lm_head_weight, lm_head_bias, targets, chunk_size)
    count = num_items_in_batch if num_items_in_batch is not None else rows.numel()
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count


# ---------------------------------------------------------------------------------------------
# integration with a Hugging Face causal LM


def _unwrap(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model) -> str | None:
    """Why `install_chunked_loss` cannot be used on this model, or None when it can."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    hf = _unwrap(model)
    name = type(hf).__name__
    if name not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return f"{name} is not a causal LM"
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return f"its output layer is {type(head).__name__}, not a plain Linear (an adapter or quantization on it?)"
    from transformers.integrations import is_deepspeed_zero3_enabled
    # the same decision the planner counts (ftgrid.execution): under ZeRO-3 the stock loss runs
    reason = loss_fallback(hasattr(head.weight, "ds_id") or is_deepspeed_zero3_enabled())
    if reason:
        return reason
    if hf.base_model is hf:
        return f"{name} has no separate decoder module"
    config = hf.config
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, key, None) not in (None, 1, 1.0):
            return f"the model transforms its logits ({key}={getattr(config, key)})"
    if getattr(config, "output_router_logits", False):
        return "the model adds a router auxiliary loss (output_router_logits=True)"
    return None


def _chunked_forward(self, *args, **kwargs):
    """Replacement forward of a HF causal LM: the stock forward unless training with labels."""
    stock = self._ftgrid_stock_forward
    signature = inspect.signature(stock)
    call = signature.bind_partial(*args, **kwargs).arguments
    for p in signature.parameters.values():  # flatten the stock forward's **kwargs into the call
        if p.kind == p.VAR_KEYWORD:
            call.update(call.pop(p.name, {}))
    labels = call.pop("labels", None)
    head = self.get_output_embeddings()
    if labels is None or not self.training or hasattr(head.weight, "ds_id"):  # ds_id: partitioned by ZeRO-3
        return stock(*args, **kwargs)
    loss_kwargs = {k: call.pop(k) for k in LOSS_KWARGS if k in call}
    call.pop("logits_to_keep", None)
    call.pop("return_dict", None)
    out = self.base_model(**call)  # the decoder, with everything the stock forward would pass it
    loss = chunked_lm_loss(out[0], head.weight, labels, lm_head_bias=head.bias, chunk_size=self._ftgrid_chunk_size,
                           use_liger=self._ftgrid_use_liger, **loss_kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast
    return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=getattr(out, "past_key_values", None),
                                  hidden_states=getattr(out, "hidden_states", None),
                                  attentions=getattr(out, "attentions", None))


def install_chunked_loss(model, *, chunk_size: int = 1024, use_liger: bool | None = None):
    """Make `model` (a HF causal LM, or a PEFT model around one) compute its training loss with
    `chunked_lm_loss`; returns `model`. Raises ValueError where `unsupported_reason` says why not.
    `use_liger`: None = Liger's kernel where installed and on CUDA, False = always the torch chunks.

    The forward keeps its `**kwargs` signature, so the Trainer still passes `num_items_in_batch`. Installing
    twice only updates the settings; a deep copy of the model keeps the patch, bound to the copy."""
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(f"chunked loss not supported: {reason}")
    hf = _unwrap(model)
    hf._ftgrid_chunk_size = int(chunk_size)
    hf._ftgrid_use_liger = use_liger
    if "_ftgrid_stock_forward" not in hf.__dict__:
        hf._ftgrid_stock_forward = hf.forward  # bound method of the class
        hf.forward = types.MethodType(_chunked_forward, hf)
    return model


def has_chunked_loss(model) -> bool:
    return "_ftgrid_stock_forward" in _unwrap(model).__dict__


def implementation(model) -> str:
    """What computes the training loss: 'liger' | 'chunked' | 'stock' (for metrics.json and benchmarks)."""
    hf = _unwrap(model)
    if not has_chunked_loss(model):
        return "stock"
    use = hf._ftgrid_use_liger
    return "liger" if (use if use is not None else liger_available(hf.get_output_embeddings().weight.device)) \
        else "chunked"
