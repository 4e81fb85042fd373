"""The model registry: architecture facts of named models (data in models.yaml), shared by the planner,
the entrypoint and data_prep. Pure: no torch import."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from ftgrid import KIT_ROOT
from ftgrid.errors import ConfigError, did_you_mean
from ftgrid.yamlio import load_yaml_text

REGISTRY_FILE = Path(__file__).resolve().parent / "models.yaml"
TINY_TOKENIZER_DIR = KIT_ROOT / "finetune" / "assets" / "tokenizer-tiny"
PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of one registry entry (see models.yaml for the field meanings)."""

    name: str
    family: str
    model_type: str
    kind: str  # causal | encoder | seq2seq
    layers: int | tuple[int, int]
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_seq_len: int
    kv_heads: int | None = None
    tied: bool = False
    experts: int = 0
    experts_per_token: int = 0
    hub_id: str | None = None
    weights: str | None = None  # a saved model folder shipped with the kit, relative to KIT_ROOT
    params: int | None = None  # published total, checked against the built architecture by a test
    lora_preset: tuple[str, ...] = ()
    linear: tuple[str, ...] = ()
    zero3_leaf_modules: tuple[str, ...] = ()
    config_keys: dict = field(default_factory=dict, hash=False, compare=False)
    config_extra: dict = field(default_factory=dict, hash=False, compare=False)
    tokenizer: str | None = None  # a folder holding the model's tokenizer (models named by a folder)
    # The planner's geometry for a model read from its config (ftgrid.autospec): a family's `arch:` keys
    # plus measured counts; empty for registry entries (the planner reads their family's `arch:`).
    arch: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_tiny(self) -> bool:
        """No pretrained weights: built from config with random init."""
        return self.hub_id is None and self.weights is None

    @property
    def pretrained_source(self) -> str | None:
        """What `from_pretrained` loads for this entry: its hub id or its shipped weights folder."""
        return self.hub_id or (str(KIT_ROOT / self.weights) if self.weights else None)

    @property
    def is_registered(self) -> bool:
        """An entry of models.yaml (else a folder or hub id read from its config)."""
        return not self.arch

    @property
    def total_layers(self) -> int:
        return sum(self.layers) if isinstance(self.layers, tuple) else self.layers

    def hf_config_kwargs(self) -> dict:
        """Keyword arguments for `transformers.AutoConfig.for_model(model_type, **kwargs)`."""
        facts = {"layers": self.layers, "hidden": self.hidden, "heads": self.heads, "ffn": self.ffn,
                 "vocab": self.vocab, "max_seq_len": self.max_seq_len, "tied": self.tied,
                 "kv_heads": self.kv_heads, "experts": self.experts,
                 "experts_per_token": self.experts_per_token}
        out = dict(self.config_extra)
        for fact, key in self.config_keys.items():
            value = facts[fact]
            if value is None or (fact.startswith("expert") and not value):
                continue
            keys = key if isinstance(key, list) else [key]
            values = value if isinstance(value, tuple) else [value] * len(keys)
            out.update(zip(keys, values))
        return out


@functools.lru_cache(maxsize=1)
def _registry_data() -> dict:
    return load_yaml_text(REGISTRY_FILE.read_text(), str(REGISTRY_FILE), aliases=True)


def families() -> dict[str, dict]:
    """models.yaml's families by name (config keys, LoRA targets, the planner's `arch:` facts)."""
    return _registry_data()["families"]


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, ModelSpec]:
    data = _registry_data()
    families = data["families"]
    out = {}
    for name, entry in data["models"].items():
        fam = families[entry["family"]]
        spec = dict(entry)
        if isinstance(spec.get("layers"), list):
            spec["layers"] = tuple(spec["layers"])
        out[name] = ModelSpec(
            name=name,
            model_type=fam["model_type"],
            kind=fam["kind"],
            lora_preset=tuple(fam.get("lora_preset", ())),
            linear=tuple(fam.get("linear", ())),
            zero3_leaf_modules=tuple(fam.get("zero3_leaf_modules", ())),
            config_keys=fam["config_keys"],
            config_extra=fam.get("config_extra", {}),
            **spec,
        )
    return out


def model_spec(name: str) -> ModelSpec:
    """A registry name, a local folder holding config.json, or a hub id OWNER/NAME -> its ModelSpec.
    Folders and hub ids are read through transformers (ftgrid.autospec, imported only for them)."""
    name = str(name)
    spec = registry().get(name)
    if spec is not None:
        return spec
    from ftgrid import autospec

    if autospec.source_kind(name) is None:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, sorted(registry()))}; or name a folder "
                          "holding config.json, or a hub id OWNER/NAME")
    return autospec.config_spec(autospec.canonical_name(name))


def load_tokenizer(spec: ModelSpec, cfg=None):
    """The model's tokenizer as every run uses it (the data cache is keyed by it): the hub id or saved
    folder, or the project's tiny tokenizer for entries without a hub id (the *-tiny twins and the
    bases pretrained with it)."""
    import transformers  # lazy: the registry itself stays import-light

    if spec.weights and spec.tokenizer is None and not spec.is_registered:
        raise ConfigError(f"model folder {spec.weights} holds no tokenizer (tokenizer.json or "
                          "tokenizer_config.json): save one there with tokenizer.save_pretrained")
    source = spec.tokenizer or spec.hub_id or str(TINY_TOKENIZER_DIR)
    tok = transformers.AutoTokenizer.from_pretrained(source)
    # pad == eos makes the model never learn to stop (eos masked as padding): give pad its own id.
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = "right"
    return tok
