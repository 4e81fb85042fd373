#!/usr/bin/env python3
"""Train the tiny byte-level BPE tokenizer shipped in ``finetune/assets/tokenizer-tiny/``.

Run once by a developer; the output is committed so that tests and the demo run
offline (no model hub).  It is trained on the text of the shipped sample data set
``data_prep/samples/wordnet_instruct.jsonl`` (instruction, input and output of each
record)::

    python finetune/assets/make_tokenizer.py

and loads with ``AutoTokenizer.from_pretrained("finetune/assets/tokenizer-tiny")``.

* byte-level BPE (GPT-2 style: any text encodes, ``decode(encode(x)) == x``),
  vocabulary of 1024 entries including the special tokens;
* special tokens: ``<|endoftext|>`` (eos and bos), ``<|pad|>`` (pad, distinct from
  eos, so padding can be masked without masking the end of a sequence) and
  ``<|unk|>`` (unk; never produced by a byte-level model, but set for tools that
  expect one);
* ``model_max_length=2048``, right padding, no special tokens added by ``encode``;
* a small chat template for system/user/assistant messages; each assistant turn
  ends with the eos token, and ``add_generation_prompt`` opens an assistant turn.

The output is deterministic: the same input gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# Set before importing tokenizers: a fixed, single-threaded run keeps training reproducible.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_DATA = ROOT / "data_prep" / "samples" / "wordnet_instruct.jsonl"
DEFAULT_OUT = HERE / "tokenizer-tiny"

VOCAB_SIZE = 1024
EOS = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
SPECIAL_TOKENS = [EOS, PAD, UNK]  # ids 0, 1, 2
MODEL_MAX_LENGTH = 2048

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{{- '<|system|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '<|user|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\\n' + message['content'] + eos_token }}"
    "{%- else %}"
    "{{- raise_exception('Unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)


def corpus(data_path: Path) -> list[str]:
    """One training text per record: the record's fields, in file order."""
    texts = []
    with open(data_path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            texts.append("\n".join(t for t in (rec["instruction"], rec["input"], rec["output"]) if t))
    return texts


def train(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def wrap(tok: Tokenizer):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def portable_config(path: Path) -> None:
    """Name the class by its long-standing alias so transformers 4.x loads the folder too.

    transformers 5 saves ``"TokenizersBackend"``; ``"PreTrainedTokenizerFast"`` maps to the
    same class there.
    """
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    texts = corpus(args.data)
    hf = wrap(train(texts))
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.iterdir():  # no stale files from an earlier layout
        if old.is_file():
            old.unlink()
    hf.save_pretrained(str(args.out))
    portable_config(args.out / "tokenizer_config.json")

    n_tokens = sum(len(hf(t)["input_ids"]) for t in texts)
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"trained on {len(texts)} records from {args.data}")
    print(
        f"vocab_size={hf.vocab_size} len={len(hf)} eos={hf.eos_token_id} "
        f"pad={hf.pad_token_id} unk={hf.unk_token_id}"
    )
    print(f"avg tokens/record={n_tokens / len(texts):.1f}; wrote {size} bytes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
