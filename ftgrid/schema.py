"""The run config: what one training run accepts (the schema of `cell.yaml`).

Part of the shared kernel: `launch` writes configs of this schema, `finetune` reads them, `data_prep`
and every command validate with it. Pure: no torch import.

Every default lives in `RunConfig` below, with a comment. Unknown keys fail with the valid ones
listed; bad values fail with one line naming the value. Both raise `ConfigError`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ftgrid.errors import ConfigError, did_you_mean  # noqa: F401 - re-exported for schema users
from ftgrid import validate
from ftgrid.registry import TINY_TOKENIZER_DIR, ModelSpec, model_spec, registry  # noqa: F401
from ftgrid.yamlio import read_yaml_mapping

METHODS = ("full", "lora", "qlora", "lora-8bit")
LORA_METHODS = ("lora", "qlora", "lora-8bit")
QUANTIZED_METHODS = ("qlora", "lora-8bit")
TASKS = ("sft", "dpo", "token-classification", "summarization")
# Which tasks each kind of model can run (causal decoders take a classification head for tokens).
TASKS_BY_KIND = {"causal": TASKS, "encoder": ("token-classification",), "seq2seq": ("summarization",)}
# Why a task does not run on a kind, where the libraries are the reason.
UNSUPPORTED_TASKS = {
    ("seq2seq", "dpo"): "TRL's DPOTrainer (trl 1.16) trains decoder-only models; its encoder-decoder path is gone",
    ("seq2seq", "sft"): "sft is a causal-LM recipe (prompt and response in one sequence) and TRL's SFTTrainer is "
                        "decoder-only; train prompt -> response pairs with task summarization",
}
INITS = ("auto", "pretrained", "random")
SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd")
BNB_OPTIMIZERS = ("adamw-8bit", "paged-adamw-8bit")
# The learning rate when none is given: full fine-tuning moves every weight (small steps), adapters start
# from zero (LoRA, QLoRA papers: 1e-4 .. 3e-4).
DEFAULT_LR = {"full": 2e-5, "lora": 2e-4, "qlora": 2e-4, "lora-8bit": 2e-4}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PACKINGS = ("auto", "none", "bfd", "flatten")
LM_LOSS_TASKS = ("sft", "summarization")  # tasks trained on a per-token language-model loss
WANDB_MODES = ("disabled", "offline", "online")
TEMPLATES = ("tokenizer", "alpaca", "chatml", "plain")  # data_prep.templates.NAMED, plus the tokenizer's own
# Named fields a `prompt:` may use, per task: the record text it wraps (a summary's document, the user's turn).
PROMPT_FIELDS = {"sft": ("instruction",), "dpo": ("instruction",), "summarization": ("document",)}


def causal_lm_loss(task: str, spec: "ModelSpec") -> bool:
    """A causal model trained on its per-token LM loss: where packing is exact and the entrypoint's
    chunked loss replaces the stock one."""
    return task in LM_LOSS_TASKS and spec.kind == "causal"


# ---------------------------------------------------------------------------------------------
# The run config


@dataclass
class RunConfig:
    # --- identity and where outputs go
    name: str = "run"                 # cell id or a free name; used for logs and wandb
    output_dir: str = ""              # run directory; empty = the folder holding cell.yaml (or ./runs/<name>)
    # --- model and method
    model: str = "pythia-tiny"        # registry name (see models.yaml)
    init: str = "auto"                # auto: pretrained if the entry has weights, random for *-tiny
    method: str = "lora"              # full | lora | qlora | lora-8bit
    rank: int | None = None           # LoRA rank; None = 16 for LoRA methods, must stay None for full
    alpha: float | None = None        # LoRA alpha; None = 2 * rank
    lora_dropout: float = 0.05
    target_modules: str | list = "preset"  # preset | all-linear | explicit list of module names
    layers_to_transform: list | None = None  # adapters on these layer indices only (PEFT's); None = every layer
    rslora: bool = False              # scale by alpha/sqrt(r) instead of alpha/r (stable at high ranks)
    # --- task and data
    task: str = "sft"                 # sft (loss on responses only) | dpo | token-classification | summarization
    dataset: str = "wordnet:small"    # NAME[:TIER] from data_prep's catalogue, or a local file
    eval_rows: int = 0                # held-out rows for eval loss / perplexity; 0 = the dataset's default
    seq_len: int = 256                # tokens per example; longer ones are truncated
    packing: str = "auto"             # auto = bfd for causal sft/summarization, else none | none | bfd
                                      # (bin-pack examples into rows of seq_len: a micro batch is then
                                      # micro_batch x seq_len tokens; position ids reset per example, so
                                      # examples never attend to each other) | flatten (padding-free batches)
    group_by_length: bool = True      # unpacked training: batches of similar lengths (less padding; order only)
    neftune_alpha: float = 0.0        # NEFTune: noise on input embeddings during training (5 is usual); 0 = off
    dpo_beta: float = 0.1             # dpo: strength of the KL anchor to the reference model
    max_new_tokens: int = 64          # summarization: generated summary length; also samples.jsonl generations
    num_samples: int = 4              # causal sft: greedy generations for this many fixed eval prompts
    template: str = ""                # chat template: "" = the tokenizer's own, else alpaca | tokenizer | alpaca |
                                      # chatml | plain | a path to a Jinja file
    prompt: str = ""                  # the user turn with named fields: "Summarize: {document}" (summarization),
                                      # "Answer briefly. {instruction}" (sft, dpo); "" = as the data has it
    columns: str = ""                 # dataset columns renamed to a known layout: "instruction=Input,output=Output"
                                      # (YAML: a mapping {instruction: Input, output: Output})
    generate_prompts: str = ""        # a prompts .jsonl: after training, generations.jsonl from it (greedy)
    weights: str | None = None        # local folder of saved weights for this architecture (e.g. a base you
                                      # pretrained with method full: <cell>/model); overrides hub id and init
    chunked_loss: bool = True         # causal LM loss in vocabulary chunks: no tokens x vocab fp32 logits
    loss_chunk_size: int = 1024       # tokens per chunk of the chunked loss
    lm_eval_tasks: str = ""           # lm-evaluation-harness tasks (comma list) scored on the saved model or
                                      # adapter after training (rank 0; needs lm_eval, the dev extra); "" = off
    lm_eval_include: str = ""         # a folder of local lm_eval task YAMLs (offline task definitions)
    lm_eval_limit: int = 0            # examples per lm_eval task; 0 = all
    # --- batch and schedule
    micro_batch: int = 8              # examples per device per step
    grad_accum: int = 1               # micro-batches per optimizer step
    epochs: float = 1.0
    max_steps: int = -1               # > 0 overrides epochs
    optimizer: str = "adamw"          # adamw | adamw-8bit | paged-adamw-8bit (bitsandbytes) | adafactor | sgd
    lr: float | None = None           # None = by method: 2e-5 full, 2e-4 LoRA methods (DEFAULT_LR)
    min_lr: float = 0.0               # cosine decays to this after warmup
    warmup: float = 0.03              # fraction of total steps
    schedule: str = "cosine"          # cosine | linear | constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # --- numerics and systems
    precision: str = "auto"           # auto = bf16 on GPUs that have it, fp32 on CPU
    grad_ckpt: bool = False
    torch_compile: bool = False       # torch.compile the model (pays off on long runs with static shapes)
    dataloader_workers: int = -1      # -1 = auto: 0 on CPU, up to 4 per GPU process on a GPU (pinned memory)
    deepspeed: str | None = None      # path to a DeepSpeed JSON config (ds_config.json of the cell)
    seed: int = 0
    eval_every: int = 0               # steps between evaluations; 0 = only at the end
    save_every: int = 0               # steps between resumable checkpoints (<out>/checkpoints); 0 = only on
                                      # SIGUSR1/SIGTERM (preemption); a re-run resumes from the latest one
    logging_steps: int = 5
    watchdog_minutes: float = 30.0    # once training started, no step, eval batch or CPU work for this long:
                                      # every thread's stack goes to logs/, status `failed` says so, the run
                                      # exits instead of hanging; 0 = off
    # --- tracking
    wandb_mode: str = "disabled"      # disabled | offline | online; when on, WANDB_MODE in the env wins and
                                      # online without WANDB_API_KEY (or a netrc login) runs offline
    wandb_project: str = "ftgrid"
    wandb_group: str = ""             # the sweep name, so a sweep's cells group together

    # -- derived -------------------------------------------------------------------------------
    @property
    def is_lora(self) -> bool:
        return self.method in LORA_METHODS

    @property
    def uses_bitsandbytes(self) -> bool:
        """Quantized base weights or an 8-bit optimizer: the only parts of a run that call bitsandbytes."""
        return self.method in QUANTIZED_METHODS or self.optimizer in BNB_OPTIMIZERS

    def resolved(self) -> "RunConfig":
        """A copy with every None default filled in (what cell.yaml records)."""
        out = dataclasses.replace(self)
        out.model = model_spec(out.model).name  # a folder as an absolute path: cells run elsewhere
        out.lr = self.effective_lr
        if out.is_lora:
            out.rank = 16 if out.rank is None else out.rank
            out.alpha = float(2 * out.rank) if out.alpha is None else float(out.alpha)
        return out

    @property
    def effective_lr(self) -> float:
        return DEFAULT_LR.get(self.method, DEFAULT_LR["lora"]) if self.lr is None else self.lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def effective_packing(self) -> str:
        """auto: bin packing wherever it is exact (a causal model's sft/summarization loss), else none."""
        if self.packing != "auto":
            return self.packing
        return "bfd" if causal_lm_loss(self.task, model_spec(self.model)) else "none"

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        spec = model_spec(self.model)
        _choice("method", self.method, METHODS)
        _choice("init", self.init, INITS)
        _choice("task", self.task, TASKS)
        if self.task not in TASKS_BY_KIND[spec.kind]:
            why = UNSUPPORTED_TASKS.get((spec.kind, self.task))
            raise ConfigError(f"task {self.task!r} does not run on {self.model} ({spec.kind})"
                              + (f": {why}" if why else f"; {spec.kind} models run: "
                                 f"{', '.join(TASKS_BY_KIND[spec.kind])}"))
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("wandb_mode", self.wandb_mode, WANDB_MODES)
        if self.init == "pretrained" and spec.is_tiny:
            raise ConfigError(f"model {self.model!r} has no pretrained weights; use init: random")
        if self.method == "full" and (self.rank is not None or self.alpha is not None):
            raise ConfigError("method 'full' takes no LoRA rank/alpha; drop them or pick a LoRA method")
        if self.is_lora:
            if self.rank is not None and self.rank <= 0:
                raise ConfigError(f"rank must be a positive integer, got {self.rank}")
            if self.alpha is not None and self.alpha <= 0:
                raise ConfigError(f"alpha must be positive, got {self.alpha}")
            if not 0 <= self.lora_dropout < 1:
                raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            if isinstance(self.target_modules, str) and self.target_modules not in ("preset", "all-linear"):
                raise ConfigError(f"target_modules must be 'preset', 'all-linear' or a list, got "
                                  f"{self.target_modules!r}")
            layers = max(spec.layers) if isinstance(spec.layers, tuple) else spec.layers
            bad = [i for i in self.layers_to_transform or () if not 0 <= i < layers]
            if bad:
                raise ConfigError(f"layers_to_transform: layer {bad[0]} is not a layer of {self.model} "
                                  f"(it has layers 0..{layers - 1})")
        elif self.layers_to_transform is not None:
            raise ConfigError("layers_to_transform applies to LoRA methods; method 'full' trains every layer")
        if self.lr is not None:
            _positive("lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        _positive("micro_batch", self.micro_batch)
        _positive("grad_accum", self.grad_accum)
        _positive("seq_len", self.seq_len)
        if self.seq_len > spec.max_seq_len:
            raise ConfigError(f"seq_len {self.seq_len} exceeds {self.model}'s limit of {spec.max_seq_len}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("set epochs > 0 or max_steps > 0")
        if not 0 <= self.min_lr <= self.effective_lr:
            raise ConfigError(f"min_lr must be in [0, lr={self.effective_lr:g}], got {self.min_lr}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        _choice("packing", self.packing, PACKINGS)
        if self.packing not in ("auto", "none") and not causal_lm_loss(self.task, spec):
            raise ConfigError(f"packing applies to causal sft and summarization, not {self.task!r} "
                              f"with {self.model} ({spec.kind})")
        if not 0 <= self.neftune_alpha <= 100:
            raise ConfigError(f"neftune_alpha must be in [0, 100] (0 = off, 5 is usual), got {self.neftune_alpha}")
        if self.neftune_alpha and self.task in ("dpo", "token-classification"):
            raise ConfigError(f"neftune_alpha applies to generative SFT (sft, summarization), not {self.task!r}")
        _positive("dpo_beta", self.dpo_beta)
        _positive("max_new_tokens", self.max_new_tokens)
        if self.num_samples < 0:
            raise ConfigError(f"num_samples must be >= 0, got {self.num_samples}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 steps (0 = only at the end), got {self.eval_every}")
        if self.save_every < 0:
            raise ConfigError(f"save_every must be >= 0 steps (0 = only on preemption), got {self.save_every}")
        if self.logging_steps <= 0:
            raise ConfigError(f"logging_steps must be positive, got {self.logging_steps}")
        if self.eval_rows < 0:
            raise ConfigError(f"eval_rows must be >= 0, got {self.eval_rows}")
        self._validate_data_shaping()
        if self.weights and os.path.exists(self.weights):  # not visible here (a login node): train.py checks
            check_weights_folder(self.weights)
        if self.lm_eval_tasks:
            try:
                parse_lm_eval_tasks(self.lm_eval_tasks)
            except ConfigError as e:
                raise ConfigError(f"lm_eval_tasks: {e}") from None
            if spec.kind != "causal" or self.task == "token-classification":
                raise ConfigError(f"lm_eval_tasks scores causal language models; {self.model} with task "
                                  f"{self.task!r} saves none")
        if self.lm_eval_include and not os.path.isdir(self.lm_eval_include):
            raise ConfigError(f"lm_eval_include {self.lm_eval_include!r} is not a folder")
        if self.lm_eval_limit < 0:
            raise ConfigError(f"lm_eval_limit must be >= 0 (0 = every example), got {self.lm_eval_limit}")
        if self.dataloader_workers < -1:
            raise ConfigError(f"dataloader_workers must be >= 0 (or -1 = auto), got {self.dataloader_workers}")
        if self.loss_chunk_size <= 0:
            raise ConfigError(f"loss_chunk_size must be positive, got {self.loss_chunk_size}")
        if self.deepspeed and not os.path.isfile(self.deepspeed):
            raise ConfigError(f"deepspeed config not found: {self.deepspeed}")
        for key, (lo, hi) in LIMITS.items():
            value = getattr(self, key)
            if value is not None:
                (validate.finite if isinstance(lo, float) else validate.integer)(key, value, lo, hi)
        if self.is_lora and self.rank is not None and self.rank > spec.hidden:
            raise ConfigError(f"rank {self.rank} exceeds {self.model}'s hidden size {spec.hidden} (a LoRA rank "
                              f"above it adds parameters, not capacity)")
        return self


    def _validate_data_shaping(self) -> None:
        if self.template and self.template not in TEMPLATES and not os.path.isfile(self.template) \
                and "{%" not in self.template and "{{" not in self.template:
            raise ConfigError(f"unknown template {self.template!r} (and no Jinja file there)"
                              f"{did_you_mean(self.template, TEMPLATES)}")
        if self.prompt:
            allowed = PROMPT_FIELDS.get(self.task)
            if allowed is None:
                raise ConfigError(f"prompt applies to {', '.join(PROMPT_FIELDS)}, not {self.task!r}")
            unknown = [f for f in prompt_fields(self.prompt) if f not in allowed]
            if unknown:
                raise ConfigError(f"prompt names field {{{unknown[0]}}}, which {self.task} data does not have; "
                                  f"fields: {', '.join('{' + f + '}' for f in allowed)}")
        parse_columns(self.columns)
        if self.generate_prompts and not os.path.isfile(self.generate_prompts):
            raise ConfigError(f"generate_prompts: no file at {self.generate_prompts}")


def prompt_fields(text: str) -> list[str]:
    """The named fields of a `prompt:` ("Summarize: {document}" -> ["document"]); bad braces fail."""
    import string
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as e:
        raise ConfigError(f"prompt {text!r}: {e} (write a literal brace as {{{{ or }}}})") from None
    if any(not n or not n.isidentifier() for n in names):
        raise ConfigError(f"prompt {text!r} has a field without a name; name it, e.g. {{document}}")
    return names


def parse_columns(text: str) -> dict[str, str]:
    """"instruction=Input,output=Output" -> {"Input": "instruction", "Output": "output"} (source -> layout)."""
    out: dict[str, str] = {}
    for item in [t.strip() for t in str(text or "").split(",") if t.strip()]:
        target, sep, source = (x.strip() for x in item.partition("="))
        if not sep or not target or not source:
            raise ConfigError(f"columns takes LAYOUT=SOURCE pairs like instruction=Input,output=Output; got {item!r}")
        if source in out or target in out.values():
            raise ConfigError(f"columns: {item!r} maps a column twice")
        out[source] = target
    return out


# The range of every numeric field (after the checks above that say more): beyond these a value is a typo
# or an overflow (2**64 nodes of micro batch), not a setting. Floats are finite by `coerce`.
LIMITS = {
    "rank": (1, 2**20), "alpha": (0.0, 1e6), "lora_dropout": (0.0, 1.0), "eval_rows": (0, 10**9),
    "seq_len": (1, 2**24), "neftune_alpha": (0.0, 100.0), "dpo_beta": (0.0, 1e3), "max_new_tokens": (1, 2**20),
    "num_samples": (0, 10**5), "loss_chunk_size": (1, 2**31 - 1), "lm_eval_limit": (0, 10**9),
    "micro_batch": (1, 2**20), "grad_accum": (1, 2**20), "epochs": (0.0, 1e6), "max_steps": (-1, 10**12),
    "lr": (0.0, 10.0), "min_lr": (0.0, 10.0), "warmup": (0.0, 1.0), "weight_decay": (0.0, 1e3),
    "max_grad_norm": (0.0, 1e6), "dataloader_workers": (-1, 256), "seed": (0, validate.SEED_MAX),
    "eval_every": (0, 10**12), "save_every": (0, 10**12), "logging_steps": (1, 10**12),
    "watchdog_minutes": (0.0, 1e6),
}


def check_weights_folder(path: str) -> None:
    """A saved model folder: a directory holding config.json (train.py checks before loading it)."""
    if not os.path.isdir(path):
        raise ConfigError(f"weights folder {path} does not exist here")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"weights folder {path} holds no config.json (a saved model folder)")


def parse_lm_eval_tasks(text: str) -> list[str]:
    """'a, b' -> ['a', 'b']; '' -> []. An empty name ('a,,b', 'a,') is a typo, not a wildcard."""
    if not text.strip():
        return []
    names = [t.strip() for t in text.split(",")]
    if any(not n for n in names):
        raise ConfigError(f"empty task name in {text!r}")
    return names


def effective_wandb_mode(cfg: RunConfig, environ=None) -> str:
    """The wandb mode a run uses: off unless the config turns it on; then WANDB_MODE in the environment
    wins; 'online' without credentials (WANDB_API_KEY or a netrc login) falls back to 'offline'."""
    environ = os.environ if environ is None else environ
    if cfg.wandb_mode == "disabled":
        return "disabled"
    env = environ.get("WANDB_MODE", "").strip().lower()
    mode = {"dryrun": "offline", "run": "online"}.get(env, env) if env else cfg.wandb_mode
    if mode not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={env!r} in the environment{did_you_mean(env, WANDB_MODES)}")
    if mode == "online" and not (environ.get("WANDB_API_KEY") or _netrc_has_wandb(environ)):
        return "offline"
    return mode


def _netrc_has_wandb(environ) -> bool:
    import netrc
    path = environ.get("NETRC") or os.path.join(environ.get("HOME", os.path.expanduser("~")), ".netrc")
    try:
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _layer_indices(value) -> list[int]:
    """layers_to_transform: a list of layer indices, one index, or `22,23` (as typed with --set)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, (bool, float)) or not str(v).strip().lstrip("-").isdigit() for v in items):
        raise ConfigError(f"layers_to_transform takes a list of layer indices like [22, 23], got {value!r}"[:300])
    out = sorted({int(str(v).strip()) for v in items})
    if out[0] < 0:
        raise ConfigError(f"layers_to_transform: layer {out[0]} is negative (indices count from 0)")
    return out


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {key} {value!r}{did_you_mean(value, choices)}")


def _positive(key: str, value) -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")


_FIELD_TYPES = {f.name: f.type for f in fields(RunConfig)}


def coerce(key: str, value: Any) -> Any:
    """Coerce a YAML/CLI value to the field's type; raise one clear line when it cannot be."""
    kind = _FIELD_TYPES[key]
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{key} needs a value")
    try:
        if kind.startswith("int"):
            return validate.integer(key, value)
        if kind.startswith("float"):
            return validate.finite(key, value)  # nan, inf and 1e400 never reach a cell
        if key == "layers_to_transform":
            return _layer_indices(value)
        if key == "columns" and isinstance(value, dict):  # YAML mapping {layout: source} -> "layout=source,..."
            return ",".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, (dict, set)) or (isinstance(value, (list, tuple)) and kind != "str | list"):
            raise ConfigError(f"{key} takes one value, got a {type(value).__name__}: {value!r}"[:300])
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if key == "packing" and (isinstance(value, bool) or str(value).lower() in ("true", "false")):
            return "bfd" if str(value).lower() == "true" else "none"  # packing: true = bin packing
        if kind == "str | list":
            if isinstance(value, (list, tuple)):
                if not all(isinstance(v, str) and v.strip() for v in value):
                    raise ConfigError(f"{key} takes a list of module names, got {value!r}"[:300])
                return list(value)
            text = str(value)
            return text.split(",") if "," in text else text
        text = str(value)
        return VALUE_ALIASES.get(key, {}).get(text, text)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {kind.split(' ')[0]}") from None


# Names other tools use (HF TrainingArguments, TRL, PEFT, axolotl) for our run-config keys: accepted as
# aliases wherever a key is typed (cell.yaml, a sweep's train:, --set, train.py flags), in snake or kebab case.
FIELD_ALIASES = {
    "learning_rate": "lr", "per_device_train_batch_size": "micro_batch", "micro_batch_size": "micro_batch",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "warmup_ratio": "warmup", "lr_scheduler_type": "schedule", "lr_scheduler": "schedule", "optim": "optimizer",
    "gradient_checkpointing": "grad_ckpt", "max_seq_length": "seq_len", "max_length": "seq_len",
    "sequence_len": "seq_len", "lora_r": "rank", "r": "rank", "lora_alpha": "alpha",
    "lora_target_modules": "target_modules", "peft_layers_to_transform": "layers_to_transform",
    "lora_layers_to_transform": "layers_to_transform", "use_rslora": "rslora", "model_name_or_path": "model",
    "base_model": "model", "dataset_name": "dataset", "neftune_noise_alpha": "neftune_alpha", "beta": "dpo_beta",
    "eval_steps": "eval_every", "save_steps": "save_every", "dataloader_num_workers": "dataloader_workers",
}
# Names with no one-to-one key of ours: refused with what to use instead.
FIELD_HINTS = {
    "warmup_steps": "ours is warmup, a fraction of the total steps (e.g. warmup: 0.03)",
    "report_to": "set wandb_mode: offline or online (wandb is the tracker; default disabled)",
    "resume_from_checkpoint": "resuming is automatic: a re-run of a cell resumes from <run dir>/checkpoints",
    "bf16": "set precision: bf16", "fp16": "set precision: fp16", "tf32": "set precision",
    "per_device_eval_batch_size": "evaluation uses micro_batch",
    "save_strategy": "set save_every N (steps); preemption always checkpoints",
    "eval_strategy": "set eval_every N (steps); 0 evaluates at the end only",
}
# Values other tools use for our choices.
VALUE_ALIASES = {
    "optimizer": {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw",
                  "adamw_bnb_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit", "paged_adamw_8bit": "paged-adamw-8bit"},
}


def canonical_key(key) -> str:
    """Our name for a typed key: kebab or snake case, ours or a familiar alias (else unchanged)."""
    if not isinstance(key, str):
        raise ConfigError(f"a config key must be a name, got {key!r}")
    name = key.strip().replace("-", "_")
    if name in FIELD_HINTS:
        raise ConfigError(f"unknown config key {key!r}: {FIELD_HINTS[name]}")
    return FIELD_ALIASES.get(name, name)


def canonical_keys(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with every key in our spelling; two spellings of one key are an error."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = canonical_key(key)
        if name in out:
            raise ConfigError(f"config key {name!r} is given twice (as {key!r} too)")
        out[name] = value
    return out


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig; unknown keys fail with the valid ones listed."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
    data = canonical_keys(data)
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        key = unknown[0]
        raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, sorted(_FIELD_TYPES))}")
    cfg = RunConfig(**{k: coerce(k, v) for k, v in data.items()})
    return cfg.validate().resolved()


def load(path: str | os.PathLike) -> RunConfig:
    path = Path(path)
    data = read_yaml_mapping(path, "config")
    # Paths in a cell.yaml are relative to its folder, so a run directory can be moved.
    if data.get("deepspeed") and not os.path.isabs(str(data["deepspeed"])):
        data["deepspeed"] = str(path.resolve().parent / str(data["deepspeed"]))
    cfg = from_dict(data)
    if not cfg.output_dir:
        cfg.output_dir = str(path.resolve().parent)
    return cfg


def dump(cfg: RunConfig) -> str:
    """cell.yaml text: the resolved config, keys in schema order."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


SLUG_RE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str) -> str:
    return SLUG_RE.sub("-", str(text)).strip("-")
