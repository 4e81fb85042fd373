"""What the entrypoint will actually run for a cell: which loss, which attention kernel, which mask.

One decision shared by the planner (launch/plan.py counts what runs) and the entrypoint
(finetune/losses.py and finetune/train.py run it), so the two cannot drift. Pure: no torch import.

- Loss: the chunked causal-LM loss (finetune/losses.py) where asked, for a causal model's per-token LM
  loss (sft, summarization), and not under ZeRO-3: there the output layer's weight is partitioned and
  the loss reads it outside the module's forward, so the stock Hugging Face loss runs (full fp32 logits).
- Attention: transformers' sdpa. Without a mask CUDA's SDPA picks flash (grouped-query K/V read as
  they are); packed rows (`bfd`, `flatten`) carry no attention mask but position ids that restart per
  example, from which transformers builds a block-diagonal mask: SDPA then runs its memory-efficient
  kernel and saves a 16-bit bias (2·s² bytes per row and layer), and transformers first expands
  grouped-query K/V to all heads (`repeat_kv`). Unpacked rows are counted without a mask (a padded
  batch has one too, but is also shorter than seq_len).
"""
from __future__ import annotations

from dataclasses import dataclass

from ftgrid.registry import ModelSpec
from ftgrid.schema import causal_lm_loss

ZERO3_LOSS_REASON = "ZeRO-3 partitions the output layer's weight (the loss reads it outside the module's forward)"
PACKED = ("bfd", "flatten")


@dataclass(frozen=True)
class Execution:
    loss: str                 # chunked | stock
    loss_reason: str          # why the stock loss runs where the chunked one was asked; "" otherwise
    attention: str            # flash | mem-efficient | eager
    mask: str                 # none | block-diagonal | causal (eager builds the full causal mask)
    expand_kv: bool           # grouped-query K/V expanded to every head before attention

    @property
    def attention_bias(self) -> bool:
        """SDPA keeps a 16-bit (rows x s x s) bias per layer for the backward."""
        return self.attention == "mem-efficient"


def loss_fallback(zero3: bool) -> str | None:
    """Why the chunked loss cannot run in this DeepSpeed set-up, or None."""
    return ZERO3_LOSS_REASON if zero3 else None


def execution(spec: ModelSpec, *, task: str, packing: str, chunked_loss: bool, zero: int,
              attn_implementation: str = "sdpa") -> Execution:
    """`packing` is RunConfig.effective_packing() (none | bfd | flatten)."""
    lm = causal_lm_loss(task, spec)
    reason = ""
    loss = "chunked" if chunked_loss and lm else "stock"
    if loss == "chunked" and zero == 3:
        loss, reason = "stock", ZERO3_LOSS_REASON
    grouped = bool(spec.kv_heads) and spec.kv_heads != spec.heads
    if attn_implementation == "eager":
        return Execution(loss, reason, "eager", "causal", grouped)
    if packing in PACKED and spec.kind == "causal":
        return Execution(loss, reason, "mem-efficient", "block-diagonal", grouped)
    return Execution(loss, reason, "flash", "none", False)
