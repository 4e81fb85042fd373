"""Registry entry -> tokenizer and model, with the fine-tuning method applied (full or LoRA)."""
from __future__ import annotations

import torch
import transformers
from peft import LoraConfig, get_peft_model

from finetune.config import TINY_TOKENIZER_DIR, ModelSpec, RunConfig

AUTO_CLASS = {
    "causal": transformers.AutoModelForCausalLM,
    "encoder": transformers.AutoModelForTokenClassification,
    "seq2seq": transformers.AutoModelForSeq2SeqLM,
}
PEFT_TASK = {"causal": "CAUSAL_LM", "encoder": "TOKEN_CLS", "seq2seq": "SEQ_2_SEQ_LM"}
PAD_TOKEN = "<|pad|>"


def use_pretrained(spec: ModelSpec, cfg: RunConfig) -> bool:
    return cfg.init == "pretrained" or (cfg.init == "auto" and not spec.is_tiny)


def load_tokenizer(spec: ModelSpec, cfg: RunConfig):
    source = spec.hub_id if not spec.is_tiny else str(TINY_TOKENIZER_DIR)
    tok = transformers.AutoTokenizer.from_pretrained(source)
    # pad == eos makes the model never learn to stop (eos masked as padding): give pad its own id.
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = "right"
    return tok


def compute_dtype(cfg: RunConfig) -> torch.dtype:
    if cfg.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]


def weights_dtype(cfg: RunConfig) -> torch.dtype:
    # LoRA keeps the frozen base in the compute dtype; full fine-tuning keeps fp32 master weights
    # and lets the Trainer autocast (how HF runs with bf16=True).
    return compute_dtype(cfg) if cfg.is_lora else torch.float32


def build_model(spec: ModelSpec, cfg: RunConfig, tokenizer):
    auto = AUTO_CLASS[spec.kind]
    dtype = weights_dtype(cfg)
    if use_pretrained(spec, cfg):
        model = auto.from_pretrained(spec.hub_id, dtype=dtype)
    else:
        config = transformers.AutoConfig.for_model(
            spec.model_type, **spec.hf_config_kwargs(),
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(cfg.seed)
        model = auto.from_config(config, dtype=dtype)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.is_lora:
        model = apply_lora(model, spec, cfg)
    return model


def lora_targets(spec: ModelSpec, cfg: RunConfig) -> list[str]:
    if cfg.target_modules == "preset":
        return list(spec.lora_preset)
    if cfg.target_modules == "all-linear":
        return list(spec.linear)
    return list(cfg.target_modules)


def apply_lora(model, spec: ModelSpec, cfg: RunConfig):
    lora = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(spec, cfg), use_rslora=cfg.rslora,
        task_type=PEFT_TASK[spec.kind],
        fan_in_fan_out=spec.family == "gpt2",  # GPT-2 stores Conv1D weights transposed
    )
    if cfg.grad_ckpt:
        model.enable_input_require_grads()
    return get_peft_model(model, lora)


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters; ZeRO-3 partitioned params report their full size (ds_numel)."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
