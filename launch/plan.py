"""Memory planner: per-GPU peak memory of one fine-tuning cell, whether it fits, and by how much.

    python -m launch.plan --model pythia-1.4b --method lora --rank 16 --micro-batch 8 --seq-len 2048 \
        --gpu h100-80gb [--gpus 8 --zero auto] [--grad-ckpt] [--json]

Pure and fast: no torch or transformers import (the grid CLI plans thousands of cells with it).
Everything is counted from the model registry (ftgrid/models.yaml, including each family's `arch`
facts) and a few coefficients calibrated on measured peaks (launch/measured_peaks.csv).

What it models (bytes are per GPU):
- Model states. HF Trainer without DeepSpeed (zero 0) runs mixed precision as autocast over an fp32
  model for full fine-tuning (weights 4 + grads 4 + AdamW 8 B/param, plus autocast's 16-bit copy of
  every linear weight, kept for the backward pass) and over a 16-bit frozen base for LoRA (adapters
  fp32 with fp32 grads and optimizer states); QLoRA keeps the base's block linears in nf4 (0.5 B +
  double-quant constants), lora-8bit in int8. DeepSpeed (zero 1-3) runs the model in pure 16-bit with
  fp32 master weights, fp32 gradient partitions and optimizer states divided over the GPUs (ZeRO-1),
  16-bit gradients divided too (ZeRO-2), and weights divided too (ZeRO-3, plus the gathered layers).
  Offload moves the optimizer side (and with `optimizer+params`, the weights) to host RAM.
- Activations, per token and layer, counted from what autograd keeps with flash-style attention
  (no s^2 term; Korthikanti's 34·s·b·h generalised to the family's layers): norm inputs (fp32 under
  autocast), q/k/v and the attention output, the MLP activation's inputs, dropout masks, the inputs
  of layers whose weight trains (full fine-tuning; the output projection's input is the attention
  output the kernel keeps, unless transformers copies it) and of LoRA adapters (a calibrated
  bytes-per-input coefficient). Gradient checkpointing keeps each layer's input, plus the larger of
  the logits and one recomputed layer (they never coexist: the peak is at the loss's backward or at a
  recompute; wide adapters put a recompute's peak at the widest one, with PEFT's fp32 input copies).
  MoE blocks keep the top-k experts' activations. `attn_implementation: eager` adds Korthikanti's
  5·a·s term. Packed rows (ftgrid.execution decides, as the entrypoint runs them) carry a
  block-diagonal mask: SDPA's memory-efficient kernel keeps a 16-bit s² bias per row and layer, and
  grouped-query K/V are expanded to every head. LoRA on some layers only (`h.22.attn.c_attn`)
  counts those layers; layers below the first adapted one keep nothing (no grad flows there).
- The reference for all of this is launch/trace.py (a training step traced on the meta device).
- Logits: fp32 log-softmax output, its gradient and the gradient of its input (12 B per logit).
- The peak is the larger of two moments: the end of the forward pass (all activations alive,
  gradients not yet allocated unless accumulating) and the optimizer step (all gradients, no
  activations). A calibrated constant covers transients (loss and attention backward scratch, cuBLAS
  workspaces). The predicted peak is comparable to torch.cuda.max_memory_allocated; the capacity it is
  compared with is the card's memory less the CUDA context and a fragmentation reserve.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path


from ftgrid.cli import CliParser
from ftgrid import schema as run_config
from ftgrid import validate
from ftgrid.errors import ConfigError, did_you_mean, one_line
from ftgrid.execution import execution
from ftgrid.yamlio import load_yaml_text
from ftgrid.registry import REGISTRY_FILE, ModelSpec, model_spec
from ftgrid.schema import LORA_METHODS, METHODS, OPTIMIZERS, PRECISIONS, RunConfig, causal_lm_loss

GIB = float(2**30)
HERE = Path(__file__).resolve().parent
GPUS_FILE = HERE / "gpus.yaml"
MEASURED_FILE = HERE / "measured_peaks.csv"

ZERO_STAGES = (0, 1, 2, 3)
OFFLOADS = ("none", "optimizer", "optimizer+params")

# Coefficients. The first three are calibrated on the H100 points in measured_peaks.csv; the rest
# are physical constants or library defaults.
COEFFS = {
    # Bytes kept per element of a LoRA adapter's input (16-bit run): the 16-bit copy lora_A saves (2)
    # plus the fused dropout's 1-byte mask when lora_dropout > 0 (PEFT casts the input to the fp32
    # adapter dtype first; that copy is freed). The meta-device trace (launch/trace.py) counts 3.0.
    "lora_input_bytes": 3.0,
    # DeepSpeed ZeRO-3 default sub_group_size: fp32 gradients are built (and the optimizer steps) one
    # sub-group of this many parameters at a time.
    "z3_sub_group_size": 1e9,
    # Allocated transients on top of the modelled terms at the peak (cross-entropy and attention
    # backward scratch, cuBLAS workspaces, small buffers): the common residual of the three points.
    "transients_gib": 0.65,
    # Per logit at the loss's backward: the fp32 log-softmax output, its gradient, the input gradient.
    "logits_bytes": 12.0,
    # bitsandbytes nf4 with double quantisation: 4 bits + an 8-bit absmax per 64 + fp32 per 256 blocks.
    "nf4_bytes": 0.5 + 1 / 64 + 4 / (64 * 256),
    "int8_bytes": 1.0,
    # DeepSpeed default stage3_max_live_parameters (ds_configs/zero.json.j2 leaves it unset).
    "z3_max_live_params": 1e9,
    # Host RAM per training process (Python, torch, CUDA libraries) and one checkpoint shard.
    "host_process_gib": 2.5,
    "host_shard_gib": 5.0,
}

# Optimizer state bytes per trainable parameter (the optimizer the Trainer builds from RunConfig).
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw-8bit": 2.0, "paged-adamw-8bit": 2.0, "adafactor": 0.1, "sgd": 0.0}

# ---------------------------------------------------------------------------------------------
# GPU presets (data in gpus.yaml)


@dataclass(frozen=True)
class GpuPreset:
    name: str
    mem_gib: float          # usable: visible memory less the CUDA context
    bf16: bool
    device: str = "cuda"
    visible_gib: float = 0.0
    fragmentation: float = 0.0  # fraction of mem_gib kept free for the caching allocator
    peak_tflops: float = 0.0    # throughput prior for launch/timing.py: bf16 dense peak (cpu: measured)
    mfu: float = 0.0            # achievable fraction of the peak
    step_overhead_s: float = 0.0  # fixed time per optimizer step

    @property
    def capacity_gib(self) -> float:
        return self.mem_gib * (1.0 - self.fragmentation)


def _load_presets() -> dict[str, GpuPreset]:
    data = load_yaml_text(GPUS_FILE.read_text(), str(GPUS_FILE))
    frag = float(data.get("fragmentation", 0.0))
    out = {}
    for name, p in data["presets"].items():
        device = p.get("device", "cuda")
        out[name] = GpuPreset(
            name=name, mem_gib=round(float(p["visible_gib"]) - float(p.get("context_gib", 0.0)), 3),
            bf16=bool(p["bf16"]), device=device, visible_gib=float(p["visible_gib"]),
            fragmentation=frag if device == "cuda" else 0.0, peak_tflops=float(p.get("peak_tflops", 0.0)),
            mfu=float(p.get("mfu", 0.0)), step_overhead_s=float(p.get("step_overhead_s", 0.0)))
    return out


GPU_PRESETS: dict[str, GpuPreset] = _load_presets()


def gpu_preset(name: str) -> GpuPreset:
    try:
        return GPU_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown gpu {name!r}{did_you_mean(name, list(GPU_PRESETS))}") from None


# ---------------------------------------------------------------------------------------------
# Architecture geometry (from the registry entry and its family's `arch` facts)


@dataclass(frozen=True)
class _Linear:
    name: str
    din: int
    dout: int
    tag: str
    bias: bool


@dataclass(frozen=True)
class _Stack:
    layers: int
    linears: tuple[_Linear, ...]   # per layer (cross-attention included for decoder stacks)
    norms: int                      # norm applications per layer
    cross: bool


@dataclass(frozen=True)
class _Geometry:
    spec: ModelSpec
    arch: dict = field(hash=False, compare=False)
    h: int = 0
    q: int = 0
    kv: int = 0
    f: int = 0
    heads: int = 0
    stacks: tuple[_Stack, ...] = ()
    experts: tuple[_Linear, ...] = ()
    head_out: int = 0               # logits per token: vocab (LM heads) or labels (classifier)
    total: int = 0
    block_params: int = 0           # largest layer (ZeRO-3 gathers layer by layer)
    head_params: int = 0            # largest non-layer module (embedding / LM head)
    quant_weights: int = 0          # weights of the layers bitsandbytes quantises (nn.Linear in blocks)
    largest_quant: int = 0
    linear_weights: int = 0         # every weight used by a matmul (autocast keeps a 16-bit copy)
    classifier: int = 0             # modules_to_save for token classification (PEFT trains it)

    @property
    def targetable(self) -> list[str]:
        names = {lin.name for st in self.stacks for lin in st.linears}
        if self.spec.kind != "encoder":
            names.add("lm_head")
        return sorted(names)


@functools.lru_cache(maxsize=1)
def _families() -> dict:
    return load_yaml_text(REGISTRY_FILE.read_text(), str(REGISTRY_FILE), aliases=True)["families"]


_DIM_TERM = re.compile(r"^(\d*)([a-z]+)$")


def _dim(expr, env: dict) -> int:
    if isinstance(expr, int):
        return expr
    total = 0
    for term in str(expr).replace(" ", "").split("+"):
        m = _DIM_TERM.fullmatch(term)
        if not m or m.group(2) not in env:
            raise ConfigError(f"bad dimension {expr!r} in models.yaml arch (use sums of {sorted(env)})")
        total += int(m.group(1) or 1) * env[m.group(2)]
    return total


@functools.lru_cache(maxsize=None)
def _geometry(spec: ModelSpec) -> _Geometry:
    # a model read from its config (ftgrid.autospec) carries its own arch facts and measured counts
    arch = dict(spec.arch or _families()[spec.family].get("arch") or {})
    if not arch.get("linears"):
        raise ConfigError(f"family {spec.family!r} has no `arch.linears` in models.yaml: the planner "
                          "cannot count its layers")
    heads = spec.heads
    hd = int(arch.get("head_dim") or spec.hidden // heads)
    env = {"h": spec.hidden, "q": heads * hd, "kv": (spec.kv_heads or heads) * hd, "ffn": spec.ffn}
    h = spec.hidden

    def linears(key):
        return tuple(_Linear(str(n), _dim(i, env), _dim(o, env), str(t), bool(b))
                     for n, i, o, t, b in arch.get(key) or ())

    block = linears("linears")
    cross = linears("cross_linears")
    experts = linears("expert_linears") if spec.experts else ()
    norm_p = 2 * h if arch.get("norm", "layernorm") == "layernorm" else h
    n_norms = int(arch.get("block_norms", 2))

    def lin_params(lins):
        return sum(lin.din * lin.dout + (lin.dout if lin.bias else 0) for lin in lins)

    moe = spec.experts * lin_params(experts) + (spec.experts * h if arch.get("router") else 0)
    enc_layer = lin_params(block) + n_norms * norm_p + moe
    dec_layer = enc_layer + lin_params(cross) + (norm_p if cross else 0)

    if spec.kind == "seq2seq":
        l_enc, l_dec = spec.layers if isinstance(spec.layers, tuple) else (spec.layers, spec.layers)
        stacks = (_Stack(l_enc, block, n_norms, False), _Stack(l_dec, block + cross, n_norms + 1, True))
    else:
        stacks = (_Stack(spec.total_layers, block, n_norms, False),)

    pos = (spec.max_seq_len + int(arch.get("pos_offset", 0))) * h if arch.get("pos_emb") == "learned" else 0
    per_stack = pos + (norm_p if arch.get("embed_norm") else 0) + (norm_p if arch.get("final_norm") else 0)
    embed = spec.vocab * h + int(arch.get("token_types", 0)) * h
    classifier = 0
    if arch.get("head") == "classifier":
        labels = int(arch.get("num_labels", 2))
        classifier = h * labels + labels
        head, head_out = classifier, labels
    else:
        head = (0 if spec.tied else spec.vocab * h) + (spec.vocab if arch.get("lm_head_bias") else 0)
        head_out = spec.vocab
    layer_params = [enc_layer] * stacks[0].layers + ([dec_layer] * stacks[1].layers if len(stacks) > 1 else [])
    total = int(arch.get("params") or embed + head + len(stacks) * per_stack + sum(layer_params))

    quant = sum(st.layers * sum(lin.din * lin.dout for lin in st.linears) for st in stacks)
    linear_w = quant + sum(st.layers for st in stacks) * (
        spec.experts * sum(lin.din * lin.dout for lin in experts) + (spec.experts * h if arch.get("router") else 0))
    if spec.kind != "encoder":
        linear_w += spec.vocab * h       # the LM head's matmul (tied or not)
    largest_quant = max(lin.din * lin.dout for st in stacks for lin in st.linears)
    return _Geometry(
        spec=spec, arch=arch, h=h, q=env["q"], kv=env["kv"], f=spec.ffn, heads=heads, stacks=stacks,
        experts=experts, head_out=head_out, total=total,
        block_params=int(arch.get("block_params") or max(enc_layer, dec_layer if cross else 0)),
        head_params=max(spec.vocab * h, head), quant_weights=quant, largest_quant=largest_quant,
        linear_weights=linear_w, classifier=classifier)


def resolve_targets(spec: ModelSpec, targets, layers=None) -> tuple[str, ...]:
    """'preset' | 'all-linear' | list (or comma string) of module names -> tuple of names.
    `layers` (PEFT's layers_to_transform) keeps the adapters of those layer indices only: each name
    becomes one `name@i` per layer, as a per-layer suffix target does; a module outside the layers
    (lm_head) is not adapted (PEFT matches layer indices in the module's name)."""
    if targets is None or targets == "preset":
        names = tuple(spec.lora_preset)
    elif targets == "all-linear":
        names = tuple(spec.linear)
    else:
        if isinstance(targets, str):
            targets = [t for t in targets.split(",") if t]
        names = tuple(_target_name(str(t)) for t in targets)
    if layers is None:
        return names
    keep = {int(i) for i in layers}
    return tuple(dict.fromkeys(
        [t for t in names if "@" in t and int(t.split("@")[1]) in keep]
        + [f"{t}@{i}" for t in names if "@" not in t for i in sorted(keep)]))


def _target_name(target: str) -> str:
    """A module name, or `name@i` for a suffix that names one layer (`h.22.attn.c_attn` -> c_attn@22)."""
    parts = target.split(".")
    layer = [p for p in parts[:-1] if p.isdigit()]
    return f"{parts[-1]}@{layer[-1]}" if layer else parts[-1]


def _first_targeted_layer(targets, layers: int) -> int:
    indices = [int(t.split("@")[1]) for t in targets if "@" in t and int(t.split("@")[1]) < layers]
    return min(indices, default=0)


def _layers_targeted(targets, name: str, layers: int) -> int:
    """How many of a stack's `layers` carry an adapter on the linear `name`."""
    if name in targets:
        return layers
    return len({int(i) for t in targets if "@" in t for n, i in [t.split("@")] if n == name and int(i) < layers})


def param_counts(spec: ModelSpec, method: str, rank: int | None, targets) -> tuple[int, int]:
    """(total, trainable) parameters, counted analytically.

    total is the base architecture (what transformers builds; adapters not included). trainable is
    every parameter for `full`; for LoRA methods the adapters (r·(in + out) per targeted linear, as
    PEFT builds them) plus the classifier PEFT trains for token classification (modules_to_save).
    """
    geo = _geometry(spec)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}{did_you_mean(method, METHODS)}")
    if method == "full":
        return geo.total, geo.total
    rank = 16 if rank is None else int(rank)
    if rank <= 0:
        raise ConfigError(f"rank must be a positive integer, got {rank}")
    names = set(resolve_targets(spec, targets))
    trainable = 0
    matched = set()
    for st in geo.stacks:
        for lin in st.linears:
            n = _layers_targeted(names, lin.name, st.layers)
            if n:
                trainable += n * rank * (lin.din + lin.dout)
                matched.add(lin.name)
    if "lm_head" in names and spec.kind != "encoder":
        trainable += rank * (geo.h + spec.vocab)
        matched.add("lm_head")
    if not matched:
        raise ConfigError(f"no LoRA target of {sorted(names)} is a linear layer of {spec.name}; "
                          f"valid: {', '.join(geo.targetable)}")
    return geo.total, trainable + geo.classifier


@functools.lru_cache(maxsize=4096)
def _counts(spec: ModelSpec, method: str, rank: int, targets: tuple[str, ...]) -> tuple[int, int]:
    if method == "full":
        total = _geometry(spec).total
        return total, total
    return param_counts(spec, method, rank, targets)


# ---------------------------------------------------------------------------------------------
# Activations per token


def _norm_bytes(arch: dict, h: int, n: int, distinct: int, mode: str, model16: bool, full: bool) -> float:
    """Bytes per token kept by `n` norm applications reading `distinct` different inputs."""
    if arch.get("norm", "layernorm") == "layernorm":
        if mode == "amp" and model16:
            return 4 * h * n          # autocast runs layer_norm in fp32: one fp32 copy per call
        return (2 if mode == "pure16" else 4) * h * distinct
    # RMSNorm upcasts explicitly, then multiplies the 16-bit result by its weight.
    out = 4 * h * (n if model16 else distinct)
    if full:
        out += (2 if model16 else 4) * h * n
    return out


@functools.lru_cache(maxsize=4096)
def _activation_coeffs(spec: ModelSpec, method: str, targets: tuple[str, ...], rank: int, mode: str,
                       ckpt: bool, eager: bool, lora_dropout: bool, bias: bool = False,
                       expand_kv: bool = False) -> tuple[float, float, float, float, float]:
    """(c0, c1, logits, r0, r1): activation bytes per token are c0 + c1·seq_len; logits bytes per
    token; with gradient checkpointing r0 + r1·seq_len per token is the one layer being recomputed
    (it never coexists with the logits: see _cell_terms). `bias`: SDPA's memory-efficient kernel
    keeps a 16-bit (s x s) bias per row and layer (a mask is present: packed rows); `expand_kv`:
    transformers expands grouped-query K/V to every head before such an SDPA call."""
    geo = _geometry(spec)
    arch = geo.arch
    h, q, kv, f, a = geo.h, geo.q, geo.kv, geo.f, geo.heads
    full = method == "full"
    model16 = mode == "pure16" or (mode == "amp" and not full)
    act_b = 4 if mode == "fp32" else 2
    resid_b = 2 if model16 else 4
    lora_b = COEFFS["lora_input_bytes"] * (2 if mode == "fp32" else 1)
    if not lora_dropout:
        lora_b = min(lora_b, act_b)
    quant = {"qlora": "nf4", "lora-8bit": "int8"}.get(method)
    targets = set(targets) if method in LORA_METHODS else set()
    k = spec.experts_per_token if spec.experts else 1
    parallel = bool(arch.get("parallel"))
    ln_fp32 = mode == "amp" and model16 and arch.get("norm", "layernorm") == "layernorm"

    def block(st: _Stack) -> tuple[float, float]:
        n = st.norms
        out = _norm_bytes(arch, h, n, 1 if parallel else n, mode, model16, full)
        # attention: q, k, v as flash attention saves them (a fused projection's output stays alive
        # through the v view; rotary makes new q and k), the output and the log-sum-exp
        if arch.get("qkv") == "fused":
            attn = act_b * (q + 2 * kv) + (act_b * (q + kv) if arch.get("pos_emb") == "rotary" else 0)
            attn += act_b * 2 * q if expand_kv else 0      # the expanded copies beside the fused output
        else:
            attn = act_b * (q + 2 * (q if expand_kv else kv))
        attn += act_b * q + 4 * a
        if st.cross:
            attn += act_b * (q + 2 * kv) + act_b * q + 4 * a
        per_s = (5 * a * (2 if st.cross else 1) * (2 if mode == "fp32" else 1)) if eager else 0.0
        per_s += 2.0 if bias and not eager else 0.0
        act = arch.get("act", "gelu")
        if act == "gated":
            mlp = 3 * act_b * f                 # gate (activation input), activation out, up
        elif act == "gelu_tanh_py":
            mlp = {"amp": 14, "pure16": 8, "fp32": 16}[mode] * f
        else:
            mlp = act_b * f                     # fused gelu keeps its input
        if spec.experts:
            mlp = k * (mlp + act_b * h) + 8 * spec.experts   # top-k experts, routing-weight product
        masks = (int(arch.get("dropout_masks", 0)) + (1 if st.cross else 0)) * h
        saved = 0.0
        if full:
            # The output projection reads the attention output, the tensor the kernel already keeps
            # (counted above), unless transformers' `.contiguous()` copies it: eager attention, or
            # flash with a query laid out heads-first (arch `attn_out_copy`: gpt_neox's partial
            # rotary concatenates); the memory-efficient kernel (packed rows) writes it tokens-first.
            copied = eager or (not bias and bool(arch.get("attn_out_copy")))
            inputs = [lin for lin in st.linears if copied or lin.tag not in ("attn", "xattn")]
            if mode == "amp":                   # each autocast cast of a layer input is its own copy
                saved += sum(2 * lin.din for lin in inputs)
            else:
                saved += sum(act_b * d for d in {lin.tag: lin.din for lin in inputs}.values())
            if spec.experts:
                saved += k * act_b * (h + f) + act_b * h
        if quant == "int8":                      # bnb's 8-bit matmul keeps its input
            for tag, din in {lin.tag: lin.din for lin in st.linears}.items():
                fp32_in = ln_fp32 and (tag.startswith("ln") or tag == "enc")
                saved += (4 if fp32_in else act_b) * din
        for lin in st.linears:
            if lin.name in targets:
                saved += lora_b * lin.din + act_b * rank
        return out + attn + mlp + masks + saved, per_s

    c0 = c1 = 0.0
    one_layer = one_layer_s = 0.0
    for st in geo.stacks:
        per_layer, per_s = block(st)
        # adapters on some layers only (`h.22.attn.c_attn`): counted on those layers
        partial = [(_layers_targeted(targets, lin.name, st.layers), lora_b * lin.din + act_b * rank)
                   for lin in st.linears if lin.name not in targets]
        one_layer = max(one_layer, per_layer + sum(b for n, b in partial if n))
        one_layer_s = max(one_layer_s, per_s)
        # below the first adapted layer nothing requires grad, so those layers keep nothing
        # (without checkpointing: PEFT's enable_input_require_grads is only called with it)
        live = st.layers if full or ckpt or any(lin.name in targets for lin in st.linears) \
            else st.layers - _first_targeted_layer(targets, st.layers)
        if ckpt:                                 # each layer keeps its input; one layer is recomputed
            c0 += st.layers * resid_b * h
        else:
            c0 += live * per_layer + sum(n * b for n, b in partial)
            c1 += live * per_s
        if arch.get("embed_dropout"):
            c0 += h
        if arch.get("embed_norm"):
            c0 += _norm_bytes(arch, h, 1, 1, mode, model16, full)
        if arch.get("final_norm"):
            c0 += _norm_bytes(arch, h, 1, 1, mode, model16, full)
    # the head's input, when the head trains (full) or carries an adapter / is trained by PEFT
    if full:
        c0 += act_b * h
    elif "lm_head" in targets and spec.kind != "encoder":
        c0 += lora_b * h + act_b * rank
    elif geo.classifier and method in LORA_METHODS:
        c0 += act_b * h + h
    logits = COEFFS["logits_bytes"] * geo.head_out
    # A recomputed layer peaks in its own backward (the gradients of its widest intermediates, MLP
    # gate/up) or, where adapters are wide, in its recomputed forward at the widest adapter: PEFT's
    # fp32 cast of the input and the dropout's fp32 output beside the input itself, while the block
    # still holds its residual and the MLP its input (the recompute stops after the last saving op).
    backward = 2 * act_b * f * (k if spec.experts else 1)
    adapter_in = max((lin.din for st in geo.stacks for lin in st.linears
                      if _layers_targeted(targets, lin.name, st.layers)), default=0)
    widest = (act_b + (4 if mode != "fp32" else 0) + (4 if lora_dropout else 0)) * adapter_in
    recompute = one_layer + max(backward, widest + resid_b * h + act_b * h if adapter_in else 0.0)
    return c0, c1, logits, (recompute if ckpt else 0.0), (one_layer_s if ckpt else 0.0)


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Plan:
    peak_gib: float
    capacity_gib: float
    fits: bool
    breakdown: dict = field(hash=False)   # GiB per term at the peak; sums to peak_gib
    max_micro_batch: int = 0
    host_ram_gib: float = 0.0
    zero: int = 0
    offload: str = "none"
    gpu: str = ""
    gpus: int = 1
    micro_batch: int = 0
    seq_len: int = 0
    phase: str = "forward"                 # forward: end of forward (activations) | step: optimizer step
    forward_gib: float = 0.0               # the two moments the peak is the larger of
    step_gib: float = 0.0
    activation_gib: float = 0.0            # activations + logits of the micro batch (end of forward)
    params: int = 0
    trainable: int = 0
    notes: tuple = ()

    @property
    def headroom_gib(self) -> float:
        return round(self.capacity_gib - self.peak_gib, 3)

    def to_dict(self) -> dict:
        return {
            "peak_gib": self.peak_gib, "capacity_gib": self.capacity_gib, "fits": self.fits,
            "headroom_gib": self.headroom_gib, "max_micro_batch": self.max_micro_batch,
            "breakdown": dict(self.breakdown), "host_ram_gib": self.host_ram_gib, "zero": self.zero,
            "offload": self.offload, "gpu": self.gpu, "gpus": self.gpus, "micro_batch": self.micro_batch,
            "seq_len": self.seq_len, "phase": self.phase, "forward_gib": self.forward_gib,
            "step_gib": self.step_gib, "activation_gib": self.activation_gib, "params": self.params,
            "trainable": self.trainable, "notes": list(self.notes),
        }


_DEFAULTS = RunConfig()


def _get(run: dict, key: str):
    value = run.get(key)
    return getattr(_DEFAULTS, key) if value is None else value


def _positive_int(key: str, value) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class _Cell:
    """Everything but the micro batch: memory = fixed + micro_batch · per_sample (forward moment)."""
    fixed_fwd: dict = field(hash=False)
    per_sample_act: float = 0.0
    per_sample_logits: float = 0.0
    step: dict = field(hash=False, default_factory=dict)
    slack: float = 0.0  # allocator transients at the peak (CUDA only: calibrated on the H100)

    @property
    def fwd_total(self) -> float:
        return sum(self.fixed_fwd.values())

    @property
    def step_total(self) -> float:
        return sum(self.step.values())


def _cell_terms(spec: ModelSpec, method: str, rank: int, targets: tuple, seq_len: int, ckpt: bool,
                precision: str, optimizer: str, grad_accum: int, lora_dropout: bool, eager: bool,
                preset: GpuPreset, gpus: int, zero: int, offload: str,
                loss_chunk: int = 0, bias: bool = False, expand_kv: bool = False) -> tuple[_Cell, str, float, tuple]:
    geo = _geometry(spec)
    full = method == "full"
    total, trainable = _counts(spec, method, rank, targets)
    sixteen = precision in ("bf16", "fp16") or (precision == "auto" and preset.device == "cuda")
    ds = zero >= 1
    mode = ("pure16" if sixteen else "fp32") if ds else ("amp" if sixteen else "fp32")
    wb = 2 if sixteen else 4
    ob = OPTIMIZER_BYTES[optimizer]
    n = gpus
    notes = []

    # frozen base bytes (LoRA methods)
    qb = {"qlora": COEFFS["nf4_bytes"], "lora-8bit": COEFFS["int8_bytes"]}.get(method)
    if full:
        frozen = 0.0
    elif qb is not None:
        # PEFT's prepare_model_for_kbit_training upcasts every weight bitsandbytes left alone to fp32
        frozen = (geo.total - geo.quant_weights) * 4 + geo.quant_weights * qb
        if spec.experts:
            notes.append("MoE experts are fused 3-D parameters in transformers 5: bitsandbytes "
                         "leaves them 16-bit")
    else:
        frozen = geo.total * wb
    dequant = 2 * geo.largest_quant * 2 if qb is not None else 0.0   # one layer dequantised, fwd + bwd

    if not ds:
        w = 4.0 * total if full else frozen + 4.0 * trainable
        g = 4.0 * trainable
        o = ob * trainable
        cache = 0.0
        if mode == "amp":
            cache = 2.0 * geo.linear_weights if full else 2.0 * trainable
        ddp = 4.0 * trainable if n > 1 else 0.0
        fwd = {"weights": w, "gradients": g if grad_accum > 1 else 0.0, "optimizer": o,
               "buffers": cache + ddp + dequant}
        step = {"weights": w, "gradients": g, "optimizer": o, "buffers": ddp}
        host_off = 0.0
    else:
        shard = n if zero == 3 else 1
        train_w = wb * trainable
        w = (train_w + frozen) / shard
        live = 0.0
        if zero == 3:
            block = geo.block_params * (wb if full or qb is None else
                                        wb * (1 - geo.quant_weights / geo.total) + qb * geo.quant_weights / geo.total)
            live = min(2 * block + wb * geo.head_params,
                       max(COEFFS["z3_max_live_params"] * wb, block + wb * geo.head_params))
        g16 = wb * trainable / (1 if zero == 1 else n)
        g32 = (4.0 * trainable / n) if sixteen else 0.0
        if zero == 3:           # ZeRO-3 builds fp32 gradients (and steps) one sub-group at a time
            g32 = min(g32, 4.0 * COEFFS["z3_sub_group_size"]) if sixteen else 0.0
        o = ((4.0 if sixteen else 0.0) + ob) * trainable / n
        host_off = 0.0
        if offload in ("optimizer", "optimizer+params"):
            host_off += o + g32
            o = g32 = 0.0
            if zero >= 2:           # ZeRO-Offload streams reduced gradient buckets to host memory
                g16 = 0.0
        if offload == "optimizer+params":
            host_off += w
            w = 0.0
        buckets = 2 * wb * geo.h * geo.h     # reduce bucket ("auto": hidden^2), double-buffered by overlap_comm
        # ZeRO-3 allocates its 16-bit gradient partition at init; stages 1-2 only when accumulating
        fwd = {"weights": w, "gradients": g16 if grad_accum > 1 or zero == 3 else 0.0, "optimizer": o,
               "buffers": live + buckets + dequant}
        step = {"weights": w, "gradients": g16 + g32, "optimizer": o, "buffers": buckets}

    c0, c1, logits, r0, r1 = _activation_coeffs(spec, method, targets if not full else (), rank if not full else 0,
                                                mode, ckpt, eager, lora_dropout, bias, expand_kv)
    tokens = seq_len
    if loss_chunk:
        # finetune.losses' chunked loss: no (tokens x vocab) logits. It keeps the gradient of the head's
        # input per token and, at a time, one chunk's fp32 logits (+ their 16/32-bit softmax); a trained
        # head adds its fp32 gradient and a compute-dtype copy.
        act_b = 4 if mode == "fp32" else 2
        logits = act_b * geo.h
        chunk = loss_chunk * geo.head_out * (4 + act_b)
        head = geo.head_out * geo.h * (4 + 2) if full else 0.0
        fwd = dict(fwd, buffers=fwd["buffers"] + chunk + head)
    if ckpt:
        # the peak is at the loss's backward (checkpoints + logits) or at one layer's recompute
        # (checkpoints + that layer): the logits are freed before any layer is recomputed
        c0 += max(0.0, r0 + r1 * seq_len - logits)
    cell = _Cell(fixed_fwd=fwd, per_sample_act=tokens * (c0 + c1 * seq_len),
                 per_sample_logits=tokens * logits, step=step,
                 slack=COEFFS["transients_gib"] * GIB if preset.device == "cuda" else 0.0)
    if preset.device == "cuda" and precision == "bf16" and not preset.bf16:
        notes.append(f"{preset.name} has no bf16: the Trainer needs fp16 there (same memory)")
    if spec.kind == "seq2seq":
        notes.append("seq2seq: source and target both counted at seq_len")
    return cell, mode, host_off, tuple(notes)


def _peak_bytes(cell: _Cell, micro_batch: int) -> float:
    fwd = cell.fwd_total + micro_batch * (cell.per_sample_act + cell.per_sample_logits)
    return max(fwd, cell.step_total) + cell.slack


def _peak_terms(cell: _Cell, micro_batch: int) -> tuple[str, dict]:
    fwd = dict(cell.fixed_fwd, activations=micro_batch * cell.per_sample_act,
               logits=micro_batch * cell.per_sample_logits)
    if sum(fwd.values()) >= cell.step_total:
        terms, phase = fwd, "forward"
    else:
        terms, phase = dict(cell.step, activations=0.0, logits=0.0), "step"
    terms["slack"] = cell.slack
    return phase, terms


MAX_MICRO_BATCH = 1024


def plan_cell(run: dict, *, gpu: str, gpus: int = 1, zero: int = 0, offload: str = "none",
              gpus_per_node: int | None = None) -> Plan:
    """Plan one cell: `run` holds run-config fields (ftgrid.schema.RunConfig keys; missing ones
    take RunConfig's defaults). gpus is the world size; gpus_per_node (default min(gpus, 8)) only
    sets the per-node host RAM."""
    preset = gpu_preset(gpu)
    spec = model_spec(_get(run, "model"))
    method = _get(run, "method")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}{did_you_mean(method, METHODS)}")
    gpus = _positive_int("gpus", gpus)
    if zero not in ZERO_STAGES or isinstance(zero, bool):
        raise ConfigError(f"unknown zero stage {zero!r}; valid: 0, 1, 2, 3 (or auto on the CLI)")
    if offload not in OFFLOADS:
        raise ConfigError(f"unknown offload {offload!r}{did_you_mean(offload, OFFLOADS)}")
    if offload != "none" and zero == 0:
        raise ConfigError(f"offload {offload!r} needs DeepSpeed: pick zero 1, 2 or 3")
    if offload == "optimizer+params" and zero != 3:
        raise ConfigError("offload 'optimizer+params' needs zero 3 (DeepSpeed offloads parameters only in ZeRO-3)")
    micro_batch = _positive_int("micro_batch", _get(run, "micro_batch"))
    seq_len = _positive_int("seq_len", _get(run, "seq_len"))
    if seq_len > spec.max_seq_len:
        raise ConfigError(f"seq_len {seq_len} exceeds {spec.name}'s limit of {spec.max_seq_len}")
    precision = _get(run, "precision")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}{did_you_mean(precision, PRECISIONS)}")
    optimizer = _get(run, "optimizer")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}{did_you_mean(optimizer, OPTIMIZERS)}")
    grad_accum = _positive_int("grad_accum", _get(run, "grad_accum"))
    if method in LORA_METHODS:
        rank = _positive_int("rank", 16 if run.get("rank") is None else run["rank"])
        targets = resolve_targets(spec, _get(run, "target_modules"), run.get("layers_to_transform"))
    else:
        rank, targets = 0, ()
    lora_dropout = float(_get(run, "lora_dropout")) > 0
    eager = run.get("attn_implementation") == "eager"
    ckpt = bool(_get(run, "grad_ckpt"))
    # What the entrypoint will run (ftgrid.execution, shared with finetune): the chunked loss for a
    # causal model's LM loss unless ZeRO-3 forces the stock one; packed rows' block-diagonal mask.
    exe = execution(spec, task=_get(run, "task"), packing=_effective_packing(run, spec),
                    chunked_loss=bool(_get(run, "chunked_loss")), zero=zero,
                    attn_implementation=run.get("attn_implementation") or "sdpa")
    loss_chunk = _positive_int("loss_chunk_size", _get(run, "loss_chunk_size")) if exe.loss == "chunked" else 0

    cell, mode, host_off, notes = _cell_terms(
        spec, method, rank, targets, seq_len, ckpt, precision, optimizer, grad_accum, lora_dropout,
        eager, preset, gpus, zero, offload, loss_chunk, exe.attention_bias, exe.expand_kv)
    if exe.loss_reason:
        notes = notes + (f"stock loss (full logits counted): {exe.loss_reason}",)
    capacity = preset.capacity_gib * GIB
    peak = _peak_bytes(cell, micro_batch)
    phase, terms = _peak_terms(cell, micro_batch)

    # largest micro batch that fits, everything else equal (binary search; the peak grows with it)
    fwd0, step0 = cell.fwd_total, cell.step_total
    per = cell.per_sample_act + cell.per_sample_logits
    slack = cell.slack

    def fits_at(b: int) -> bool:
        return max(fwd0 + b * per, step0) + slack <= capacity

    if not fits_at(1):
        best = 0
    elif fits_at(MAX_MICRO_BATCH):
        best = MAX_MICRO_BATCH
    else:
        lo, hi = 1, MAX_MICRO_BATCH - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits_at(mid):
                lo = mid
            else:
                hi = mid - 1
        best = lo

    total, trainable = _counts(spec, method, rank, targets)
    local = gpus_per_node or min(gpus, 8)
    host = _host_ram(spec, method, total, preset, mode, zero, gpus, local, host_off, peak)
    order = ("weights", "gradients", "optimizer", "activations", "logits", "buffers", "slack")
    breakdown = {key: round(terms.get(key, 0.0) / GIB, 4) for key in order}
    peak_gib = round(sum(breakdown.values()), 4)
    cap_gib = round(preset.capacity_gib, 3)
    return Plan(peak_gib=peak_gib, capacity_gib=cap_gib, fits=peak <= capacity, breakdown=breakdown,
                max_micro_batch=best, host_ram_gib=round(host / GIB, 2), zero=zero, offload=offload,
                gpu=preset.name, gpus=gpus, micro_batch=micro_batch, seq_len=seq_len, phase=phase,
                forward_gib=round((fwd0 + micro_batch * per + slack) / GIB, 3),
                step_gib=round((step0 + slack) / GIB, 3), activation_gib=round(micro_batch * per / GIB, 4),
                params=total, trainable=trainable, notes=notes)


def _effective_packing(run: dict, spec: ModelSpec) -> str:
    packing = _get(run, "packing")
    if packing == "auto":   # RunConfig.effective_packing: bin packing for a causal LM loss
        return "bfd" if causal_lm_loss(_get(run, "task"), spec) else "none"
    return packing


def _host_ram(spec, method, total, preset, mode, zero, gpus, local, host_off, peak) -> float:
    """Per node: each process's runtime, the model as loaded (before it moves to the GPU) or the
    offloaded states, whichever is larger."""
    per_proc = COEFFS["host_process_gib"] * GIB
    if preset.device == "cpu":
        return local * (per_proc + peak)
    if method in ("qlora", "lora-8bit"):
        load = COEFFS["host_shard_gib"] * GIB            # quantised while loading, shard by shard
    else:
        # finetune.models loads full fine-tuning in fp32 (DeepSpeed casts on the GPU), LoRA bases 16-bit
        load_b = 4 if (method == "full" or mode == "fp32") else 2
        load = total * load_b
        if zero == 3:                                     # zero.Init partitions while loading
            load = load / gpus + COEFFS["host_shard_gib"] * GIB
    return local * (per_proc + max(load, host_off))


@dataclass(frozen=True)
class OomFix:
    """The cheapest change that makes a predicted-OOM cell fit: run-config and resource changes."""
    text: str
    run: dict = field(default_factory=dict, hash=False)         # RunConfig fields to change
    resources: dict = field(default_factory=dict, hash=False)   # zero, offload, gpus


def suggest_fix(run: dict, *, gpu: str, gpus: int = 1, zero: int = 0, offload: str = "none",
                gpus_per_node: int | None = None, max_gpus: int = 64) -> OomFix | None:
    """In order of cost: the largest micro batch that fits with the gradient accumulation that keeps
    the global batch; gradient checkpointing; a ZeRO stage or offload; more GPUs (doubling, ZeRO
    chosen again; with them the accumulation shrinks to keep the global batch where it divides, and
    the micro batch where nothing else fits). None when the cell fits already or nothing up to
    `max_gpus` does."""
    kw = dict(gpu=gpu, gpus_per_node=gpus_per_node)
    if plan_cell(run, gpus=gpus, zero=zero, offload=offload, **kw).fits:
        return None
    ga = int(_get(run, "grad_accum"))
    for ckpt in ((False, True) if not _get(run, "grad_ckpt") else (True,)):
        trial = dict(run, grad_ckpt=ckpt)
        change = _fitting_batch(trial, lambda r: plan_cell(r, gpus=gpus, zero=zero, offload=offload, **kw))
        if change is not None:
            if ckpt and not _get(run, "grad_ckpt"):
                change["grad_ckpt"] = True
            text = (f"micro batch {change['micro_batch']} x grad accum {change['grad_accum']}"
                    + (" + grad-ckpt" if "grad_ckpt" in change else ""))
            return OomFix(text, change)
    n = gpus
    while n <= max_gpus:
        p, change = choose_zero(run, offload=offload, gpus=n, **kw), {}
        if not p.fits and not _get(run, "grad_ckpt"):
            change = {"grad_ckpt": True}
            p = choose_zero(dict(run, **change), offload=offload, gpus=n, **kw)
        if not p.fits:
            trial = dict(run, grad_ckpt=True)
            batch = _fitting_batch(trial, lambda r: choose_zero(r, offload=offload, gpus=n, **kw))
            if batch is not None:
                change.update(batch)
                p = choose_zero(dict(trial, **batch), offload=offload, gpus=n, **kw)
        if p.fits:
            where = f"{n} GPUs, " if n != gpus else ""
            if "micro_batch" in change:
                where += f"micro batch {change['micro_batch']}, "
            accum = change.get("grad_accum", ga)
            if n != gpus and accum % (n // gpus) == 0:   # keep the global batch where the accumulation allows
                change["grad_accum"] = accum // (n // gpus)
            if change.get("grad_accum", ga) != ga:
                where += f"grad accum {change['grad_accum']}, "
            return OomFix(f"{where}zero {p.zero}" + (f" offload {p.offload}" if p.offload != "none" else "")
                          + (" + grad-ckpt" if "grad_ckpt" in change else ""), change,
                          {"zero": p.zero, "offload": p.offload, "gpus": n})
        n *= 2
    return None


def _fitting_batch(run: dict, plan) -> dict | None:
    """The largest micro batch below the cell's that `plan` says fits, with the gradient accumulation
    that keeps micro x accumulation (each candidate planned with its own accumulation)."""
    mb, ga = int(_get(run, "micro_batch")), int(_get(run, "grad_accum"))
    best = plan(dict(run, micro_batch=1, grad_accum=mb * ga)).max_micro_batch
    for m in range(min(best, mb - 1), 0, -1):
        if (mb * ga) % m == 0:
            change = {"micro_batch": m, "grad_accum": mb * ga // m}
            if plan(dict(run, **change)).fits:
                return change
    return None


_SLURM_MEM_UNITS = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 2**10}


def slurm_mem_gib(mem: str) -> float | None:
    """A SLURM --mem value in GiB (no unit = megabytes); None for "" and 0 (all of the node's memory)."""
    mem = str(mem or "").strip().upper()
    if not mem or mem == "0":
        return None
    unit = mem[-1] if mem[-1] in _SLURM_MEM_UNITS else "M"
    return float(mem.rstrip("KMGT")) * _SLURM_MEM_UNITS[unit]


def mem_warning(mem: str, plans) -> str | None:
    """One line when the user's --mem is below the host RAM a cell is predicted to need."""
    asked = slurm_mem_gib(mem)
    need = max((p.host_ram_gib for p in plans), default=0.0)
    if asked is None or asked >= need:
        return None
    return (f"warning: --mem {mem} is below the predicted host RAM per node of {need:.0f} GiB "
            f"(the largest cell); raise it or leave --mem out to use the prediction")


def choose_zero(run: dict, *, gpu: str, gpus: int, offload: str = "none",
                gpus_per_node: int | None = None) -> Plan:
    """`--zero auto`: the lowest ZeRO stage that fits without offload (starting with `offload` if
    one was asked), then with optimizer offload (stages 1-3), then ZeRO-3 with optimizer+params
    offload. If nothing fits, the ZeRO-3 full-offload plan (fits False)."""
    if offload not in OFFLOADS:
        raise ConfigError(f"unknown offload {offload!r}{did_you_mean(offload, OFFLOADS)}")
    tries = [(z, "none") for z in ZERO_STAGES]
    tries += [(z, "optimizer") for z in (1, 2, 3)] + [(3, "optimizer+params")]
    start = OFFLOADS.index(offload)
    tries = [(z, o) for z, o in tries if OFFLOADS.index(o) >= start]
    plan = None
    for z, o in tries:
        plan = plan_cell(run, gpu=gpu, gpus=gpus, zero=z, offload=o, gpus_per_node=gpus_per_node)
        if plan.fits:
            return plan
    return plan


# ---------------------------------------------------------------------------------------------
# Measured points (the probe appends to measured_peaks.csv; tests check the planner against them)


def measured_points(path: str | Path = MEASURED_FILE) -> list[dict]:
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get("model") and not row["model"].startswith("#")]


def _truthy(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes")


def plan_measured(row: dict) -> Plan:
    """The plan for one row of measured_peaks.csv."""
    run = {"model": row["model"], "method": row["method"], "micro_batch": int(row["micro_batch"]),
           "seq_len": int(row["seq_len"]), "grad_ckpt": _truthy(row.get("grad_ckpt", "")),
           # rows without a loss column were measured with the stock HF loss (full fp32 logits)
           "chunked_loss": (row.get("loss") or "stock").strip() == "chunked",
           # rows without a packing column were measured on unpacked fixed-length rows
           "packing": (row.get("packing") or "none").strip()}
    if row["method"] in LORA_METHODS:
        run["rank"] = int(row["rank"]) if row.get("rank") else None
        targets = (row.get("targets") or "preset").strip()
        run["target_modules"] = targets if targets in ("preset", "all-linear") else targets.split(";")
    return plan_cell(run, gpu=row["gpu"], gpus=int(row.get("gpus") or 1), zero=int(row.get("zero") or 0))


# ---------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m launch.plan", description="Predict per-GPU peak memory of a fine-tuning cell.")
    p.add_argument("--model", required=True, help="registry name, a folder holding config.json, or a hub id")
    p.add_argument("--method", default="lora")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16)")
    p.add_argument("--target-modules", default="preset", help="preset | all-linear | a,b,c")
    p.add_argument("--layers-to-transform", default=None, metavar="I,J",
                   help="LoRA on these layer indices only (PEFT's layers_to_transform)")
    p.add_argument("--micro-batch", type=int, default=_DEFAULTS.micro_batch)
    p.add_argument("--seq-len", type=int, default=_DEFAULTS.seq_len)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--packing", default="auto", choices=("auto", "none", "bfd", "flatten"),
                   help="auto: packed rows for a causal LM loss (their attention mask is counted)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--lora-dropout", type=float, default=_DEFAULTS.lora_dropout)
    p.add_argument("--gpu", default="h100-80gb")
    p.add_argument("--gpus", type=validate.arg_int(1, 10_000 * 64), default=1,
                   help="world size (nodes x GPUs per node)")
    p.add_argument("--gpus-per-node", type=validate.arg_int(1, 64), default=None,
                   help="default min(gpus, 8); --gpus must be a multiple of it")
    p.add_argument("--zero", default="0", help="0 | 1 | 2 | 3 | auto")
    p.add_argument("--offload", default="none", help="none | optimizer | optimizer+params")
    p.add_argument("--loss", choices=("chunked", "stock"), default="chunked",
                   help="chunked: the entrypoint's default (no tokens x vocab logits); stock: HF's loss")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def _table(plan: Plan, run: dict) -> str:
    adapter = ""
    if run["method"] in LORA_METHODS:
        names = resolve_targets(model_spec(run["model"]), run["target_modules"], run["layers_to_transform"])
        adapter = f" r{run.get('rank') or 16} [{','.join(names)}]"
    lines = [f"{run['model']} {run['method']}{adapter}"
             + f"  micro-batch {plan.micro_batch} x seq {plan.seq_len}"
             + ("  grad-ckpt" if run.get("grad_ckpt") else ""),
             f"{plan.gpus} x {plan.gpu}  zero {plan.zero}  offload {plan.offload}  "
             f"params {plan.params / 1e9:.3f}B  trainable {plan.trainable / 1e6:.2f}M",
             "", f"{'term':<12}{'GiB':>10}"]
    for key, value in plan.breakdown.items():
        lines.append(f"{key:<12}{value:>10.2f}")
    moment = ("end of forward: activations alive" if plan.phase == "forward"
              else "optimizer step: all gradients, no activations")
    lines += [f"{'peak':<12}{plan.peak_gib:>10.2f}   ({moment})",
              f"{'capacity':<12}{plan.capacity_gib:>10.2f}",
              "",
              f"fits: {'yes' if plan.fits else 'NO'}   max micro-batch: {plan.max_micro_batch}   "
              f"host RAM per node: {plan.host_ram_gib:.1f} GiB"]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = model_spec(args.model)
        if args.method not in METHODS:
            raise ConfigError(f"unknown method {args.method!r}{did_you_mean(args.method, METHODS)}")
        gpu_preset(args.gpu)
        if args.zero not in ("0", "1", "2", "3", "auto"):
            raise ConfigError(f"unknown zero stage {args.zero!r}; valid: 0, 1, 2, 3, auto")
        if args.rank is not None and args.rank <= 0:
            raise ConfigError(f"rank must be a positive integer, got {args.rank}")
        for key in ("micro_batch", "seq_len", "gpus", "grad_accum"):
            if getattr(args, key) <= 0:
                raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
        if args.gpus_per_node and args.gpus % args.gpus_per_node:
            raise ConfigError(f"--gpus {args.gpus} is not a multiple of --gpus-per-node {args.gpus_per_node} "
                              f"(gpus is the world size: nodes x GPUs per node)")
        targets = args.target_modules
        if targets not in ("preset", "all-linear"):
            targets = [t for t in targets.split(",") if t]
        run = {"model": spec.name, "method": args.method, "rank": args.rank, "target_modules": targets,
               "micro_batch": args.micro_batch, "seq_len": args.seq_len, "grad_ckpt": args.grad_ckpt,
               "grad_accum": args.grad_accum, "precision": args.precision, "optimizer": args.optimizer,
               "lora_dropout": args.lora_dropout, "chunked_loss": args.loss == "chunked",
               "packing": args.packing, "layers_to_transform": args.layers_to_transform}
        # the run-config rules every command shares: bounds, rank <= hidden size, seq_len <= context
        run["layers_to_transform"] = run_config.from_dict(
            {k: v for k, v in run.items() if v is not None}).layers_to_transform
        if args.zero == "auto":
            plan = choose_zero(run, gpu=args.gpu, gpus=args.gpus, offload=args.offload,
                               gpus_per_node=args.gpus_per_node)
        else:
            plan = plan_cell(run, gpu=args.gpu, gpus=args.gpus, zero=int(args.zero), offload=args.offload,
                             gpus_per_node=args.gpus_per_node)
    except ConfigError as e:
        sys.stderr.write(f"error: {one_line(e)}\n")
        return 2
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(_table(plan, run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
