"""Registry entry -> tokenizer and model, with the fine-tuning method applied.

Methods: `full` (every weight trains, fp32 master weights), `lora` (base frozen in the compute dtype),
`qlora` (base quantized to 4-bit nf4 with double quantization; the 4-bit storage dtype is the compute
dtype so ZeRO-3 can partition it), `lora-8bit` (base in LLM.int8()).

Random-init entries (the *-tiny twins, or `init: random`) are built from config with the run's seed and
saved once as `<run dir>/base/`; every rank then loads that folder with `from_pretrained` exactly as it
would load hub weights. So quantization, ZeRO-3's partitioned `zero.Init` loading and re-applying a
saved adapter all take the real path, and the base an adapter belongs to is always on disk.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import transformers
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from ftgrid.autospec import CLASSIFIER_HEADS
from ftgrid.registry import ModelSpec, load_tokenizer  # noqa: F401 - models.load_tokenizer is the entrypoint's
from ftgrid.schema import RunConfig

PEFT_TASK = {"causal": "CAUSAL_LM", "token-classification": "TOKEN_CLS", "seq2seq": "SEQ_2_SEQ_LM"}
BASE_DIR = "base"


def use_pretrained(spec: ModelSpec, cfg: RunConfig) -> bool:
    return cfg.init == "pretrained" or (cfg.init == "auto" and not spec.is_tiny)


def compute_dtype(cfg: RunConfig) -> torch.dtype:
    if cfg.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]


def weights_dtype(cfg: RunConfig) -> torch.dtype:
    # LoRA keeps the frozen base in the compute dtype; full fine-tuning keeps fp32 master weights
    # and lets the Trainer autocast (how HF runs with bf16=True).
    return compute_dtype(cfg) if cfg.is_lora else torch.float32


def head_kind(spec: ModelSpec, cfg: RunConfig) -> str:
    """causal | token-classification | seq2seq: which head (and PEFT task type) the run trains."""
    if cfg.task == "token-classification":
        return "token-classification"
    return "seq2seq" if spec.kind == "seq2seq" else "causal"


def model_class(spec: ModelSpec, cfg: RunConfig):
    return {"causal": transformers.AutoModelForCausalLM,
            "token-classification": transformers.AutoModelForTokenClassification,
            "seq2seq": transformers.AutoModelForSeq2SeqLM}[head_kind(spec, cfg)]


def label_kwargs(label_names: list[str] | None) -> dict:
    if not label_names:
        return {}
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)}}


def quantization_config(spec: ModelSpec, cfg: RunConfig):
    if cfg.method == "qlora":
        dtype = compute_dtype(cfg)
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            # 4-bit weights packed into tensors of the compute dtype: ZeRO-3 partitions and gathers them
            # like every other parameter (uint8 storage breaks its flat buffers).
            bnb_4bit_quant_storage=dtype,
            llm_int8_skip_modules=[*CLASSIFIER_HEADS, "lm_head"])
    if cfg.method == "lora-8bit":
        return transformers.BitsAndBytesConfig(load_in_8bit=True,
                                               llm_int8_skip_modules=[*CLASSIFIER_HEADS, "lm_head"])
    return None


def base_stamp(spec: ModelSpec, cfg: RunConfig, tokenizer, label_names=None) -> dict:
    return {"model": spec.name, "seed": cfg.seed, "head": head_kind(spec, cfg), "labels": list(label_names or []),
            "vocab": len(tokenizer)}


def base_config(spec: ModelSpec, tokenizer, label_names=None):
    """The transformers config a random-init base of this entry is built from."""
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    if spec.kind == "seq2seq":  # the decoder starts from eos (BART's convention) and must end with it
        special.update(decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id)
    # merged, not splatted side by side: a model read from its config carries its own special token ids
    return transformers.AutoConfig.for_model(spec.model_type, **{**spec.hf_config_kwargs(), **special,
                                                                 **label_kwargs(label_names)})


def random_base(spec: ModelSpec, cfg: RunConfig, tokenizer, path: Path, label_names=None, *,
                builder: bool = True, timeout: float = 3600.0) -> Path:
    """The random-init base of this run, saved in `path`: built with the run's seed by one process
    (`builder`), waited for on disk by the others (no collective, so nothing times out meanwhile).

    Call it before the TrainingArguments exist: under a ZeRO-3 config transformers would build the
    model inside zero.Init. The folder is what every rank loads and what an adapter is reloaded onto."""
    path = Path(path)
    stamp = base_stamp(spec, cfg, tokenizer, label_names)
    marker = path / "ftgrid_base.json"

    def ready() -> bool:
        try:
            return json.loads(marker.read_text()) == stamp
        except (OSError, ValueError):
            return False

    if ready():
        return path
    if not builder:
        deadline = time.time() + timeout
        while not ready():
            if time.time() > deadline:
                raise TimeoutError(f"waited {timeout:.0f}s for the random base in {path}")
            time.sleep(0.5)
        return path
    marker.unlink(missing_ok=True)
    config = base_config(spec, tokenizer, label_names)
    torch.manual_seed(cfg.seed)
    model = model_class(spec, cfg).from_config(config, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    from ftgrid.rundir import atomic_write_json
    atomic_write_json(marker, stamp)  # last: its presence says the folder is complete
    return path


def build_model(spec: ModelSpec, cfg: RunConfig, tokenizer, source: str | os.PathLike | None = None,
                label_names=None, apply_method: bool = True):
    """Load the base (hub id, local path, or a random base from `random_base`) and apply the method.

    Under a ZeRO-3 DeepSpeed config the TrainingArguments must exist before this call: transformers
    then loads inside `deepspeed.zero.Init`, so each rank only ever holds its partition."""
    source = source or spec.pretrained_source
    kwargs = dict(dtype=weights_dtype(cfg), **label_kwargs(label_names))
    quant = quantization_config(spec, cfg)
    if quant is not None:
        kwargs["quantization_config"] = quant
    model = model_class(spec, cfg).from_pretrained(str(source), **kwargs)
    return prepare_model(model, spec, cfg, tokenizer, quantized=quant is not None, apply_method=apply_method)


def prepare_model(model, spec: ModelSpec, cfg: RunConfig, tokenizer, *, quantized: bool = False,
                  apply_method: bool = True):
    """What build_model does once the base is loaded: token ids, ZeRO-3 leaves, checkpointing, the
    method. Also for a model built in place from its config (benchmarks/gpu_check.py's memory cells)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # hub tokenizers that got a pad token
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.ftgrid_zero3_leaves = set_zero3_leaf_modules(model, spec)
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.grad_ckpt,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.grad_ckpt:
        model.config.use_cache = False
    if cfg.is_lora and apply_method:
        # The adapter's init must not depend on what ran before (building a random base, a cache hit).
        transformers.set_seed(cfg.seed)
        model = apply_lora(model, spec, cfg)
    return model


def load_trained(spec: ModelSpec, cfg: RunConfig, tokenizer, label_names=None):
    """The trained model of a finished run: its base with the saved adapter applied (LoRA methods),
    or the saved model (full). Loads on this process, outside any DeepSpeed context."""
    run_dir = Path(cfg.output_dir)
    if not cfg.is_lora:
        return model_class(spec, cfg).from_pretrained(str(run_dir / "model"), dtype=torch.float32,
                                                      **label_kwargs(label_names))
    from peft import PeftModel
    base = cfg.weights or (spec.pretrained_source if use_pretrained(spec, cfg) else run_dir / BASE_DIR)
    model = build_model(spec, cfg, tokenizer, base, label_names, apply_method=False)
    return PeftModel.from_pretrained(model, str(run_dir / "adapter"))


def set_zero3_leaf_modules(model, spec: ModelSpec) -> list[str]:
    """Mark MoE blocks as ZeRO-3 leaves (gathered whole), else ranks routing tokens to different experts
    wait on different parameters and hang. Classes are looked up by name among the model's modules."""
    if not spec.zero3_leaf_modules:
        return []
    classes = {type(m) for m in model.modules() if type(m).__name__ in spec.zero3_leaf_modules}
    missing = set(spec.zero3_leaf_modules) - {c.__name__ for c in classes}
    if missing:
        raise RuntimeError(f"{spec.name}: ZeRO-3 leaf module classes not found in the model: {sorted(missing)}")
    from transformers.integrations import is_deepspeed_zero3_enabled
    if not is_deepspeed_zero3_enabled():
        return []
    from deepspeed.utils import set_z3_leaf_modules
    set_z3_leaf_modules(model, sorted(classes, key=lambda c: c.__name__))
    return sorted(c.__name__ for c in classes)


def lora_targets(spec: ModelSpec, cfg: RunConfig) -> list[str]:
    if cfg.target_modules == "preset":
        return list(spec.lora_preset)
    if cfg.target_modules == "all-linear":
        return list(spec.linear)
    return list(cfg.target_modules)


def lora_config(spec: ModelSpec, cfg: RunConfig) -> LoraConfig:
    return LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(spec, cfg), use_rslora=cfg.rslora,
        layers_to_transform=cfg.layers_to_transform,  # None: every layer
        task_type=PEFT_TASK[head_kind(spec, cfg)],
        fan_in_fan_out=spec.family == "gpt2",  # GPT-2 stores Conv1D weights transposed
    )


def apply_lora(model, spec: ModelSpec, cfg: RunConfig):
    if cfg.grad_ckpt:
        model.enable_input_require_grads()
    # TOKEN_CLS makes PEFT train (and save) the new classifier head beside the adapter.
    return get_peft_model(model, lora_config(spec, cfg))


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters; ZeRO-3 partitioned params report their full size (ds_numel);
    4-bit weights count as the parameters they stand for, not the packed storage elements."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        quant_state = getattr(p, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "shape", None) is not None:
            n = int(torch.Size(quant_state.shape).numel())
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def zero3_leaves(model) -> list[str]:
    """Module classes marked as ZeRO-3 leaves (by build_model), through any PEFT wrapping."""
    for m in model.modules():
        if hasattr(m, "ftgrid_zero3_leaves"):
            return list(m.ftgrid_zero3_leaves)
    return []


def quantized_layers(model) -> dict[str, int]:
    """bitsandbytes layer classes in the model and how many of each (empty when not quantized)."""
    out: dict[str, int] = {}
    for m in model.modules():
        name = type(m).__name__
        if type(m).__module__.startswith("bitsandbytes"):
            out[name] = out.get(name, 0) + 1
    return out


def local_fraction(model) -> float:
    """Fraction of the model's parameter elements held by this process: 1.0 without ZeRO-3; about
    1/world under ZeRO-3 (plus small persistent parameters, which every rank keeps whole)."""
    full = local = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None)
        if n is None:
            full += p.numel()
            local += p.numel()
            continue
        full += n
        ds_tensor = getattr(p, "ds_tensor", None)
        local += p.data.numel() or (ds_tensor.numel() if ds_tensor is not None else 0)
    return local / full if full else 1.0
