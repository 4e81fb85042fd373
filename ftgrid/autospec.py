"""Models outside the registry: a `ModelSpec` read from a transformers config.

A model may be named by a local folder holding `config.json` (+ weights and tokenizer) or by a hub id
(`OWNER/NAME`, read when the hub is reachable). The config gives the architecture facts
(`transformers.AutoConfig`); the model built from it on torch's meta device (no memory, no weights
read) gives the exact parameter counts, the linear layers (PEFT's own `all-linear` selection) and the
per-layer geometry the memory planner reads as `spec.arch` (the same keys as a registry family's
`arch:` in models.yaml, plus measured `params` and `block_params`). A family the registry knows keeps
its curated `arch:` facts; only the counts are measured.

Only `source_kind` is cheap; `config_spec` imports transformers and torch (lazily: `import
ftgrid.registry` stays torch-free) and is cached per process.
"""
from __future__ import annotations

import functools
import os
import re

from ftgrid.errors import ConfigError

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# The usual LoRA targets by model_type where PEFT's table has none (attention query and value).
LORA_PRESETS = {"phi3": ("qkv_proj",), "olmo": ("q_proj", "v_proj"), "olmo2": ("q_proj", "v_proj"),
                "qwen3": ("q_proj", "v_proj"), "cohere": ("q_proj", "v_proj")}
# Output projections of attention blocks (their input is the attention output, not a norm's).
ATTN_OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo", "out", "proj", "out_lin")
ATTN_WORDS = ("attn", "attention")
CROSS_WORDS = ("encoder_attn", "crossattention", "cross_attn", "encdecattention")
# Token-classification heads: new and randomly initialised, so trained whole and kept in full precision
# (finetune.models), never adapted.
CLASSIFIER_HEADS = ("classifier", "score")


def source_kind(name: str) -> str | None:
    """'folder' for an existing directory (or a path-looking name), 'hub' for OWNER/NAME, else None."""
    path = os.path.expanduser(name)
    if os.path.isdir(path) or name.startswith(("/", "./", "../", "~")):
        return "folder"
    if HUB_ID.fullmatch(name):  # fullmatch: `$` would let a trailing newline through
        return "hub"
    return None


def canonical_name(name: str) -> str:
    """A folder's absolute path (cells run from other directories); a hub id as given."""
    return os.path.abspath(os.path.expanduser(name)) if source_kind(name) == "folder" else name


def read_config(name: str):
    """The transformers config of a folder or hub id, or one ConfigError line saying what to do."""
    import transformers

    kind = source_kind(name)
    if kind == "folder":
        if not os.path.isdir(name):
            raise ConfigError(f"model folder {name} does not exist (a model is a registry name, a folder "
                              "holding config.json, or a hub id OWNER/NAME)")
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ConfigError(f"model folder {name} holds no config.json (save the model there with "
                              "save_pretrained)")
    try:
        return transformers.AutoConfig.from_pretrained(name)
    except ValueError as e:  # an unknown model_type, or code the hub repo wants to run
        first = (str(e).strip().splitlines() or ["unreadable config"])[0][:160]
        raise ConfigError(f"model {name}: transformers {transformers.__version__} cannot read this "
                          f"architecture ({first})") from None
    except OSError as e:
        if kind == "folder":
            raise ConfigError(f"model folder {name}: config.json is unreadable ({str(e)[:160]})") from None
        raise ConfigError(f"model {name!r} is not in the registry and its config cannot be read from the hub "
                          f"here (offline?): download it where there is a network (`hf download {name} "
                          f"--local-dir DIR`) and name the folder DIR, or add an entry to ftgrid/models.yaml"
                          ) from None


def model_kind(config) -> str:
    """causal | encoder | seq2seq, from the config's architectures, else the Auto class mappings (a config
    without architectures that has a masked-LM head is an encoder, as BERT and RoBERTa are)."""
    from transformers import (MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING,
                              MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING, MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING)

    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = " ".join(getattr(config, "architectures", None) or [])
    causal = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING
    tokens = type(config) in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING
    if archs:
        decoder = causal and ("CausalLM" in archs or "LMHead" in archs)
    else:
        decoder = causal and not (tokens and type(config) in MODEL_FOR_MASKED_LM_MAPPING)
    if decoder:
        return "causal"
    if tokens:
        return "encoder"
    if causal:
        return "causal"
    if type(config) in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING:
        return "seq2seq"
    raise ConfigError(f"model_type {config.model_type!r} has no causal-LM, seq2seq or token-classification "
                      "head in transformers: the kit cannot train it")


@functools.lru_cache(maxsize=16)
def meta_model(name: str):
    """The model of `name`'s config built on the meta device (shapes only), with the head the kit trains
    for its kind (token classification with 2 labels for encoders, as the registry counts them)."""
    import torch
    import transformers

    config = read_config(name)
    kind = model_kind(config)
    cls = {"causal": transformers.AutoModelForCausalLM, "seq2seq": transformers.AutoModelForSeq2SeqLM,
           "encoder": transformers.AutoModelForTokenClassification}[kind]
    if kind == "encoder":
        config.num_labels = 2
    with torch.device("meta"):
        model = cls.from_config(config)
    return config, kind, model


def count_params(module) -> int:
    """Distinct parameters (tied weights once), as transformers' num_parameters counts them."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def _layer_stacks(model) -> list[tuple[str, object]]:
    """(path, ModuleList) of the transformer layer stacks: outermost lists of same-class blocks that hold
    linear layers (the decoder's after the encoder's)."""
    import torch

    found = []
    for path, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or not len(mod):
            continue
        if any(path.startswith(p + ".") for p, _ in found):
            continue
        if len({type(m) for m in mod}) == 1 and any(_linear_shape(s) for s in mod[0].modules()):
            found.append((path, mod))
    return found


def _linear_shape(mod):
    """(in, out, bias) of a Linear or transformers' Conv1D (GPT-2 style, weight stored in x out)."""
    import torch

    if isinstance(mod, torch.nn.Linear):
        return mod.in_features, mod.out_features, mod.bias is not None
    if type(mod).__name__ == "Conv1D":
        return mod.weight.shape[0], mod.weight.shape[1], mod.bias is not None
    return None


def _block_facts(block, hidden: int, cross_ok: bool) -> dict:
    """One layer's linears with the tensor each reads (the planner's tags), norms and dropout masks."""
    import torch

    norms = [m for m in block.modules() if "norm" in type(m).__name__.lower()
             and not any(p.dim() == 1 and p.numel() != hidden for p in m.parameters())]
    block_norms = max(len(norms), 1)
    parallel = block_norms == 1
    linears, cross, attn_in = [], [], []
    for path, mod in block.named_modules():
        shape = _linear_shape(mod)
        if shape is None:
            continue
        din, dout, bias = shape
        leaf, low = path.rsplit(".", 1)[-1], path.lower()
        is_cross = cross_ok and any(w in low for w in CROSS_WORDS)
        if any(w in low for w in ATTN_WORDS) or is_cross:
            if leaf in ATTN_OUT_NAMES and dout == hidden:
                tag = "xattn" if is_cross else "attn"
            elif is_cross:
                tag = "ln3" if din == hidden and "q" in leaf else "enc"
            else:
                tag = "ln1"
                attn_in.append(leaf)
        else:
            tag = ("ln1" if parallel else "ln2") if din == hidden else "act"
        (cross if is_cross else linears).append([leaf, int(din), int(dout), tag, bool(bias)])
    gated = any("gate" in lin[0] for lin in linears if lin[3] in ("ln1", "ln2") and lin[2] != hidden)
    norm_kind = "rmsnorm" if norms and all("rms" in type(m).__name__.lower() for m in norms) else "layernorm"
    return {"linears": linears, "cross_linears": cross, "block_norms": block_norms, "parallel": parallel,
            "norm": norm_kind, "act": "gated" if gated else "gelu",
            "qkv": "fused" if len(attn_in) == 1 else "separate",
            "dropout_masks": sum(1 for m in block.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0)}


def _derived_arch(model, config, kind: str, stacks) -> dict:
    import torch

    hidden = int(config.hidden_size)
    first = stacks[-1][1][0]
    arch = _block_facts(first, hidden, cross_ok=kind == "seq2seq")
    enc = _block_facts(stacks[0][1][0], hidden, cross_ok=False) if kind == "seq2seq" else arch
    arch["linears"] = enc["linears"]
    if not arch["cross_linears"]:
        arch.pop("cross_linears")
    in_layers = {id(m) for _, st in stacks for m in st.modules()}
    others = [m for m in model.modules() if id(m) not in in_layers]
    embeddings = [m for m in others if isinstance(m, torch.nn.Embedding)]
    arch["pos_emb"] = "learned" if len(embeddings) > 1 else "rotary"
    arch["final_norm"] = any("norm" in type(m).__name__.lower() for m in others)
    if kind == "encoder":
        arch.update(head="classifier", num_labels=2)
    experts = [m for _, st in stacks for m in st[0].modules() if type(m).__name__.lower().endswith("experts")]
    if experts:
        arch["expert_linears"] = [[n, int(p.shape[2]), int(p.shape[1]), "ln2" if p.shape[2] == hidden else "act",
                                   False] for n, p in experts[0].named_parameters(recurse=False) if p.dim() == 3]
    return arch


def _lora_targets(model, config, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(preset, all-linear): all-linear is PEFT's own selection (every linear but the output head)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_PRESETS

    task = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "encoder": "TOKEN_CLS"}[kind]
    linear = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear", task_type=task), model)
    # a token-classification head is new and trained whole (modules_to_save), never adapted
    linear = tuple(sorted({path.rsplit(".", 1)[-1] for path in linear.target_modules} - set(CLASSIFIER_HEADS)))
    preset = tuple(PEFT_PRESETS.get(config.model_type) or LORA_PRESETS.get(config.model_type) or ())
    if not preset or not set(preset) <= set(linear):
        preset = tuple(n for n in linear if n in ("q_proj", "v_proj", "query", "value")) or linear
    return preset, linear


def _first(config, *keys, default=None):
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    return default


@functools.lru_cache(maxsize=64)
def config_spec(name: str):
    """The ModelSpec of a folder or hub id: facts from its config, counts from its meta-device build."""
    from ftgrid.registry import ModelSpec, families

    config, kind, model = meta_model(name)
    stacks = _layer_stacks(model)
    if not stacks:
        raise ConfigError(f"model {name}: no stack of transformer layers found in {type(model).__name__}")
    family = families().get(config.model_type)
    hidden = int(config.hidden_size)
    heads = int(_first(config, "num_attention_heads", "encoder_attention_heads", "n_head"))
    measured = {"params": count_params(model),
                "block_params": max(count_params(st[0]) for _, st in stacks),
                "head_dim": int(_first(config, "head_dim", "d_kv", default=hidden // heads))}
    if family is not None:  # a family the registry knows: its curated facts, measured counts
        arch = dict(family.get("arch") or {}, **measured)
        preset, linear = tuple(family.get("lora_preset", ())), tuple(family.get("linear", ()))
        leaves = tuple(family.get("zero3_leaf_modules", ()))
    else:
        arch = dict(_derived_arch(model, config, kind, stacks), **measured)
        preset, linear = _lora_targets(model, config, kind)
        leaves = tuple(sorted({type(m).__name__ for _, st in stacks for m in st[0].modules()
                               if any(type(c).__name__.lower().endswith("experts") for c in m.children())}))
    layers = tuple(len(st) for _, st in stacks) if kind == "seq2seq" else len(stacks[0][1])
    ffn = _first(config, "intermediate_size", "ffn_dim", "encoder_ffn_dim", "d_ff", "n_inner",
                 "ffn_hidden_size", default=None) or 4 * hidden
    out_emb = model.get_output_embeddings() if kind != "encoder" else None
    tied = out_emb is not None and out_emb.weight is model.get_input_embeddings().weight
    experts = int(_first(config, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    folder = name if os.path.isdir(name) else None
    tokenizer = folder if folder and any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES) else None
    extra = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}
    return ModelSpec(
        name=name, family=config.model_type, model_type=config.model_type, kind=kind,
        layers=layers, hidden=hidden, heads=heads,
        kv_heads=_first(config, "num_key_value_heads", "num_kv_heads"), ffn=int(ffn),
        vocab=int(config.vocab_size),
        max_seq_len=int(_first(config, "max_position_embeddings", "n_positions", "max_seq_len",
                               "seq_length", default=2048)),
        tied=tied, experts=experts,
        experts_per_token=int(_first(config, "num_experts_per_tok", "moe_topk", default=0) or 0) if experts else 0,
        hub_id=None if folder else name, weights=folder, tokenizer=tokenizer,
        params=measured["params"], lora_preset=preset, linear=linear, zero3_leaf_modules=leaves,
        config_extra=extra, arch=arch)
