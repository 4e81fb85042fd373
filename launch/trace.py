"""A GPU-free activation reference: one training step of the real model, traced on the meta device.

    python -m launch.trace --model mistral-7b --method lora --micro-batch 4 --seq-len 2048 \
        [--packing] [--grad-ckpt] [--target-modules all-linear] [--json]

Builds the registry entry with transformers (and PEFT for LoRA methods) on the meta device (no memory,
seconds for a 7B model), runs one forward and backward of the causal-LM loss, and records the bytes of
every tensor the step creates while it is alive. It reproduces what the GPU run keeps, not what CPU
kernels would:
- CUDA autocast (the HF Trainer's bf16 mixed precision) is emulated: matmuls, linears and attention in
  bf16; norms, softmax, exp/log/pow and losses in fp32 (torch's CUDA autocast lists).
- Attention goes through the kernel CUDA's SDPA picks: flash (saves q, k, v, the output and the
  log-sum-exp; grouped-query K/V stay unexpanded) when there is no mask; with a mask (packed rows get
  a block-diagonal one) the memory-efficient kernel with a 16-bit bias, and transformers expands
  grouped-query K/V first (`repeat_kv`). Registered through transformers' AttentionInterface.
- Packed rows are given position ids that restart every `--example-len` tokens and no attention mask,
  as the entrypoint's packing collator sends them.

What it reports (GiB): the activation peak (live step-created tensors, parameter gradients and
autocast's 16-bit weight copies excluded), the saved activations at the end of the forward, the
16-bit weight copies and the parameter gradients. `launch.plan`'s activations + logits (zero 0, the
stock loss) are checked against the activation peak (tests/launch/test_trace.py).

Weight gradients count as activations until they are accumulated into `.grad`: for full fine-tuning
the head's 16-bit weight gradient and its fp32 cast (vocab x hidden x 6 bytes) are a transient that
can exceed the activations at small token counts (the planner books it outside activations).

Limits: bitsandbytes kernels cannot run on meta tensors, so `qlora` and `lora-8bit` are traced as LoRA
over 16-bit linears, with `prepare_model_for_kbit_training`'s fp32 upcast of the other weights (said
in the output); only causal LMs are traced; the loss is the stock Hugging Face one (the chunked loss
lives in the entrypoint).
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict, dataclass, field

from ftgrid.cli import CliParser
from ftgrid.errors import ConfigError, did_you_mean
from ftgrid.registry import ModelSpec, model_spec
from ftgrid.schema import LORA_METHODS, METHODS, RunConfig

GIB = float(2**30)
ATTENTION_NAME = "ftgrid_cuda_sdpa"   # a name with "flash" in it is taken for a hub kernel
_DEFAULTS = RunConfig()


@dataclass
class Trace:
    model: str
    method: str
    micro_batch: int
    seq_len: int
    packing: bool
    grad_ckpt: bool
    targets: list
    activation_peak_gib: float      # live step-created tensors at their peak, less grads and weight copies
    forward_saved_gib: float        # the same at the end of the forward pass
    weight_copies_gib: float        # autocast's 16-bit copies of fp32 weights (peak)
    gradients_gib: float            # parameter gradients at the end of the step
    peak_op: str                    # the operation at which the activation peak was reached
    peak_parts: dict = field(default_factory=dict)   # GiB at the peak by the op that made each tensor
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Byte accounting: every tensor an operation returns, alive until its storage is freed


def _counting_mode():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    _expired, _free_ref = torch._C.StorageBase._expired, torch._C.StorageBase._free_weak_ref

    class LiveBytes(TorchDispatchMode):
        """Sums the bytes of live storages by kind; peak of `activation` bytes over the step."""

        def __init__(self, param_storages: set):
            super().__init__()
            self.params = param_storages
            self.live: dict[int, list] = {}           # storage cdata -> [weak ref, nbytes, kind, op]
            self.bytes = {"activation": 0, "weight_copy": 0, "grad": 0}
            self.by_op: dict[str, int] = {}           # live activation bytes by the op that made them
            self.peak = self.peak_copies = 0
            self.peak_op = ""
            self.peak_parts: dict[str, int] = {}
            self.calls = 0

        def _add(self, entry, sign):
            self.bytes[entry[2]] += sign * entry[1]
            if entry[2] == "activation":
                self.by_op[entry[3]] = self.by_op.get(entry[3], 0) + sign * entry[1]

        def purge(self):
            """Forget storages that were freed (their weak references expired)."""
            dead = [k for k, entry in self.live.items() if _expired(entry[0])]
            for k in dead:
                entry = self.live.pop(k)
                _free_ref(entry[0])
                self._add(entry, -1)

        def mark(self, tensor, kind: str):
            """Move a tracked storage to another kind (a parameter's .grad, once accumulated)."""
            entry = self.live.get(tensor.untyped_storage()._cdata)
            if entry and entry[2] != kind:
                self._add(entry, -1)
                entry[2] = kind
                self._add(entry, +1)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            copy_of_weight = func is torch.ops.aten._to_copy.default and any(
                isinstance(t, torch.Tensor) and t.untyped_storage()._cdata in self.params
                for t in tree_flatten((args, kwargs))[0])
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.params:
                    continue
                entry = self.live.get(key)
                if entry and not _expired(entry[0]):
                    continue                            # a view of a tracked storage
                if entry:                               # an address reused after a free
                    _free_ref(entry[0])
                    self._add(entry, -1)
                kind = "weight_copy" if copy_of_weight else "activation"
                entry = [storage._weak_ref(), storage.nbytes(), kind, func.__name__.split(".")[0]]
                self.live[key] = entry
                self._add(entry, +1)
            self.calls += 1
            # counted bytes only overstate the live ones until a purge: purge when a peak is in question
            if self.bytes["activation"] > self.peak or self.bytes["weight_copy"] > self.peak_copies \
                    or self.calls % 256 == 0:
                self.purge()
                if self.bytes["activation"] > self.peak:
                    self.peak = self.bytes["activation"]
                    self.peak_op = func.__name__.split(".")[0]
                    self.peak_parts = {k: v for k, v in self.by_op.items() if v}
                self.peak_copies = max(self.peak_copies, self.bytes["weight_copy"])
            return out

    return LiveBytes


# ---------------------------------------------------------------------------------------------
# CUDA autocast, emulated (CPU autocast keeps other ops in fp32 than CUDA's does)


def _autocast_mode(compute_dtype):
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    low = {F.linear, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.addbmm,
           torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm,
           F.scaled_dot_product_attention, torch.einsum}
    fp32 = {F.layer_norm, F.group_norm, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
            torch.Tensor.softmax, torch.Tensor.log_softmax, torch.exp, torch.Tensor.exp, torch.log,
            torch.Tensor.log, torch.rsqrt, torch.Tensor.rsqrt, torch.pow, torch.Tensor.pow,
            torch.Tensor.__pow__, F.cross_entropy, F.nll_loss, F.softplus, torch.cumsum, torch.Tensor.cumsum,
            torch.logsumexp, F.mse_loss, torch.sum, torch.Tensor.sum, torch.norm, torch.Tensor.norm,
            F.binary_cross_entropy_with_logits}

    class CudaAutocast(TorchFunctionMode):
        def __init__(self, cache: dict | None = None):
            super().__init__()
            # autocast caches the cast of each leaf weight that requires grad
            self.cache = {} if cache is None else cache

        def _cast(self, t, dtype):
            if not (isinstance(t, torch.Tensor) and t.is_floating_point()) or t.dtype == dtype:
                return t
            if isinstance(t, torch.nn.Parameter) and t.requires_grad:
                key = (id(t), dtype)
                if key not in self.cache:
                    self.cache[key] = t.to(dtype)
                return self.cache[key]
            return t.to(dtype)

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.dropout:
                # CUDA runs the fused dropout (a 1-byte mask); meta would decompose it into a multiply
                # by a mask of the input's dtype
                x, p = args[0], kwargs.get("p", args[1] if len(args) > 1 else 0.5)
                training = kwargs.get("training", args[2] if len(args) > 2 else True)
                return torch.native_dropout(x, p, training)[0] if training and p > 0 else x
            dtype = compute_dtype if func in low else torch.float32 if func in fp32 else None
            if dtype is not None:
                cast = lambda x: self._cast(x, dtype)  # noqa: E731
                args = tuple(cast(a) if not isinstance(a, (list, tuple)) else type(a)(cast(x) for x in a)
                             for a in args)
                kwargs = {k: cast(v) for k, v in kwargs.items()}
                if func in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.Tensor.softmax,
                            torch.Tensor.log_softmax, torch.cumsum, torch.Tensor.cumsum, torch.sum,
                            torch.Tensor.sum) and kwargs.get("dtype") is None and len(args) < 3:
                    kwargs.pop("dtype", None)
            return func(*args, **kwargs)

    return CudaAutocast


# ---------------------------------------------------------------------------------------------
# Attention as CUDA's SDPA runs it


def _register_attention() -> None:
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.integrations.sdpa_attention import repeat_kv

    def cuda_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **_):
        # autocast runs SDPA in bf16 (fp32 rotary outputs of an fp32 model are cast, the casts saved)
        query, key, value = (t.to(torch.bfloat16) if t.dtype == torch.float32 else t for t in (query, key, value))
        if attention_mask is None:
            # flash: causal flag, grouped-query K/V read as they are (transformers passes enable_gqa)
            out = _flash(query, key, value, dropout, scaling, module)
        else:
            key = repeat_kv(key, getattr(module, "num_key_value_groups", 1))
            value = repeat_kv(value, getattr(module, "num_key_value_groups", 1))
            bias = attention_mask
            if bias.dtype == torch.bool:                 # SDPA turns a boolean mask into a bias of q's dtype
                bias = torch.zeros(bias.shape, dtype=query.dtype, device=query.device).masked_fill(
                    bias.logical_not(), float("-inf"))
            out = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, bias.to(query.dtype), True, dropout, False, scale=scaling)[0]
        return out.transpose(1, 2).contiguous(), None

    def _flash(query, key, value, dropout, scaling, module):
        is_causal = getattr(module, "is_causal", True)
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout, is_causal, False, scale=scaling)[0]

    AttentionInterface.register(ATTENTION_NAME, cuda_sdpa)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)   # the masks transformers makes for sdpa


@contextlib.contextmanager
def _packed_detection(packed: bool):
    """transformers' masking_utils.find_packed_sequence_indices ends with a data-dependent check (do the
    position ids restart inside a row?) that meta tensors cannot answer: answer it from what the trace
    feeds (`packed`) for the duration of the step."""
    import torch
    import transformers.masking_utils as mu

    stock = mu.find_packed_sequence_indices

    def find_packed_sequence_indices(position_ids):
        if position_ids.device.type != "meta":
            return stock(position_ids)
        if not packed:
            return None
        first = position_ids[:, :1] - 1
        return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)

    mu.find_packed_sequence_indices = find_packed_sequence_indices
    try:
        yield
    finally:
        mu.find_packed_sequence_indices = stock


# ---------------------------------------------------------------------------------------------
# The model, built as the entrypoint builds it (finetune.models), on the meta device


def build_meta_model(spec: ModelSpec, method: str, rank: int, targets: tuple, grad_ckpt: bool,
                     lora_dropout: float = _DEFAULTS.lora_dropout, recompute_context=None):
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(spec.model_type, **spec.hf_config_kwargs())
    config._attn_implementation = ATTENTION_NAME
    config.use_cache = False
    # LoRA bases load in the compute dtype; full fine-tuning keeps fp32 master weights under autocast
    dtype = torch.float32 if method == "full" else torch.bfloat16
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    if method in ("qlora", "lora-8bit"):
        # prepare_model_for_kbit_training: every weight bitsandbytes did not quantise becomes fp32
        for name, p in model.named_parameters():
            if not _quantised(name, p, model):
                p.data = p.data.float()
    if grad_ckpt:
        kwargs = {"use_reentrant": False}
        if recompute_context is not None:   # checkpoint restores CUDA autocast for the recompute; so must we
            kwargs["context_fn"] = lambda: (contextlib.nullcontext(), recompute_context())
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if method in LORA_METHODS:
        from peft import LoraConfig, get_peft_model
        if grad_ckpt:
            model.enable_input_require_grads()
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=lora_dropout, target_modules=list(targets),
                          task_type="CAUSAL_LM", fan_in_fan_out=spec.family == "gpt2")
        model = get_peft_model(model, lora)
    model.train()
    return model


def _quantised(name: str, param, model) -> bool:
    """Weights bitsandbytes quantises: 2-D linear weights inside the decoder blocks (not the head)."""
    return param.ndim == 2 and "embed" not in name and "wte" not in name and "wpe" not in name \
        and not name.endswith(("lm_head.weight", "embed_out.weight"))


# ---------------------------------------------------------------------------------------------


def resolve_targets(spec: ModelSpec, targets) -> tuple:
    if targets in (None, "preset"):
        return tuple(spec.lora_preset)
    if targets == "all-linear":
        return tuple(spec.linear)
    if isinstance(targets, str):
        targets = [t for t in targets.split(",") if t]
    return tuple(targets)


def trace_step(model_name: str, method: str = "lora", micro_batch: int = 1, seq_len: int = 512, *,
               packing: bool = False, grad_ckpt: bool = False, rank: int = 16, targets="preset",
               example_len: int = 0) -> Trace:
    """Trace one forward + backward training step on the meta device (see the module docstring)."""
    import torch

    spec = model_spec(model_name)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}{did_you_mean(method, METHODS)}")
    if spec.kind != "causal":
        raise ConfigError(f"the trace follows causal LMs only; {spec.name} is {spec.kind}")
    if seq_len > spec.max_seq_len:
        raise ConfigError(f"seq_len {seq_len} exceeds {spec.name}'s limit of {spec.max_seq_len}")
    names = resolve_targets(spec, targets) if method in LORA_METHODS else ()
    notes = []
    if method in ("qlora", "lora-8bit"):
        notes.append("bitsandbytes kernels cannot run on meta tensors: the quantised linears are traced as "
                     "16-bit linears (their dequantisation scratch is not counted)")
    _register_attention()
    autocast_cls = _autocast_mode(torch.bfloat16)
    autocast = autocast_cls()
    model = build_meta_model(spec, method, rank, names, grad_ckpt,
                             recompute_context=autocast_cls)
    params = [p for p in model.parameters()]
    param_storages = {p.untyped_storage()._cdata for p in params}

    b, s = micro_batch, seq_len
    input_ids = torch.zeros((b, s), dtype=torch.long, device="meta")
    batch = {"input_ids": input_ids, "labels": input_ids}
    if packing:
        # position ids restart every example: transformers builds the block-diagonal mask from them
        example_len = example_len or max(1, s // 4)
        batch["position_ids"] = (torch.arange(s, device="meta") % example_len).expand(b, s)

    mode = _counting_mode()(param_storages)
    for p in params:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p: mode.mark(p.grad, "grad"))
    with mode, _packed_detection(packing):
        with autocast:          # the Trainer autocasts the forward and the loss, not the backward
            loss = model(**batch).loss
        autocast.cache.clear()  # leaving autocast drops its cache (the copies backward needs stay saved)
        mode.purge()
        forward_saved = mode.bytes["activation"]
        loss.backward()
        mode.purge()
    grads = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
    return Trace(model=spec.name, method=method, micro_batch=b, seq_len=s, packing=packing, grad_ckpt=grad_ckpt,
                 targets=list(names), activation_peak_gib=round(mode.peak / GIB, 4),
                 forward_saved_gib=round(forward_saved / GIB, 4),
                 weight_copies_gib=round(mode.peak_copies / GIB, 4), gradients_gib=round(grads / GIB, 4),
                 peak_op=mode.peak_op, notes=notes,
                 peak_parts={k: round(v / GIB, 4) for k, v in sorted(mode.peak_parts.items(), key=lambda kv: -kv[1])
                             if v >= GIB / 1024})


def _parser():
    p = CliParser(prog="python -m launch.trace",
                  description="Trace one training step on the meta device: the activation peak without a GPU.")
    p.add_argument("--model", required=True)
    p.add_argument("--method", default="lora", help="lora | full | qlora | lora-8bit")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--target-modules", default="preset", help="preset | all-linear | a,b,c")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--packing", action="store_true", help="packed rows (position ids reset per example)")
    p.add_argument("--example-len", type=int, default=0, help="tokens per packed example (default seq_len/4)")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--json", action="store_true")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        for key in ("micro_batch", "seq_len", "rank"):
            if getattr(args, key) <= 0:
                raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
        result = trace_step(args.model, args.method, args.micro_batch, args.seq_len, packing=args.packing,
                            grad_ckpt=args.grad_ckpt, rank=args.rank, targets=args.target_modules,
                            example_len=args.example_len)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return 0
    print(f"{result.model} {result.method}" + (f" [{','.join(result.targets)}]" if result.targets else "")
          + f"  micro-batch {result.micro_batch} x seq {result.seq_len}"
          + ("  packed" if result.packing else "") + ("  grad-ckpt" if result.grad_ckpt else ""))
    for key in ("activation_peak_gib", "forward_saved_gib", "weight_copies_gib", "gradients_gib"):
        print(f"{key.removesuffix('_gib').replace('_', ' '):<18}{getattr(result, key):>10.3f} GiB")
    print(f"peak at {result.peak_op}; its parts by the op that made them:")
    for op, gib in result.peak_parts.items():
        print(f"  {op:<40}{gib:>10.3f} GiB")
    for note in result.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
