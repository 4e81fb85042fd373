"""Generate from a trained cell on your own prompts: `generations.jsonl` with the settings used.

    python finetune/generate.py --cell runs/<sweep>/<cell> --prompts prompts.jsonl            # greedy
    python finetune/generate.py --cell DIR --prompts p.jsonl --temperature 0.7 --top-p 0.9 --seed 1
    python finetune/generate.py --cell DIR --prompts p.jsonl --max-new-tokens 256 --out elsewhere/
    ftgrid generate --cell DIR --prompts p.jsonl

prompts.jsonl holds one JSON object a line: {"prompt": "..."} (a user turn), {"messages": [...]} (chat
turns ending with the user's), or for a summarization cell {"document": "..."}; "id" is optional. Each
prompt is rendered and tokenized exactly as the cell's training rendered its prompts (its chat template,
its `prompt:`, bos), then the trained model (base + adapter, or the saved full model) continues it.
Greedy by default; --temperature > 0 samples (nucleus --top-p, --seed). Every line of generations.jsonl
carries id, prompt, response, new_tokens, stopped_at_eos and the settings. A sweep does the same after
training each cell with `launch/grid.py --generate prompts.jsonl` (the run-config key generate_prompts).
Bad input (no trained model in the cell, a bad prompts line) is one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftgrid import rundir, schema, startup, validate  # noqa: E402
from ftgrid.cli import CliParser  # noqa: E402
from ftgrid.errors import ConfigError, one_line  # noqa: E402

OUTPUT = "generations.jsonl"
EXIT_BAD_INPUT = 2


def parse_args(argv):
    p = CliParser(prog="python finetune/generate.py", description=__doc__.split("\n")[0], epilog=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", required=True, help="a trained cell's folder (or its cell.yaml)")
    p.add_argument("--prompts", required=True, help="prompts .jsonl (one JSON object a line)")
    p.add_argument("--out", help=f"folder for {OUTPUT} (default: the cell's folder)")
    # The run config's own ranges: a flag takes what a cell.yaml takes.
    p.add_argument("--max-new-tokens", type=validate.arg_int(*schema.LIMITS["max_new_tokens"]), default=None,
                   help="default: the cell's max_new_tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    p.add_argument("--seed", type=validate.arg_int(*schema.LIMITS["seed"]), default=0, help="sampling seed")
    p.add_argument("--batch-size", type=validate.arg_int(*schema.LIMITS["micro_batch"]), default=8)
    return p.parse_args(argv)


def settings(max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """The generation settings, checked; written beside every generation."""
    if max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if not 0 <= temperature <= 100:
        raise ConfigError(f"temperature must be in [0, 100] (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    greedy = temperature == 0
    return {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": 1.0 if greedy else top_p,
            "do_sample": not greedy, "seed": seed}


def load_cell(path) -> schema.RunConfig:
    """The cell's run config, its output_dir the cell folder; a cell without a trained model is refused."""
    path = Path(path)
    # a grid cell has cell.yaml; every run (a one-off `train.py --out` too) records resolved.yaml
    found = [path] if path.is_file() else [path / n for n in ("cell.yaml", "resolved.yaml") if (path / n).is_file()]
    if not found:
        raise ConfigError(f"no cell.yaml or resolved.yaml at {path} (give a cell folder from launch/grid.py or "
                          "a train.py --out folder)")
    cell_yaml = found[0]
    cfg = schema.load(cell_yaml)
    cfg.output_dir = str(cell_yaml.resolve().parent)
    saved = Path(cfg.output_dir) / ("adapter" if cfg.is_lora else "model")
    if not saved.is_dir():
        raise ConfigError(f"cell {cfg.output_dir} has no trained {saved.name}/ yet (status: "
                          f"{rundir.read_status(Path(cfg.output_dir)).get('state', 'pending')}); train it first")
    return cfg


def generate_records(model, tokenizer, cfg: schema.RunConfig, prompts: list[dict], setting: dict,
                     synced: bool = False) -> list[dict]:
    """One generations.jsonl line per prompt (from data_prep.prompts.read_prompts)."""
    import torch
    from ftgrid.data_prep.prepare import data_shaping, generation_encoder
    from ftgrid.finetune import tasks

    encoder = generation_encoder(tokenizer, task=cfg.task, model_kind=schema.model_spec(cfg.model).kind,
                                 **data_shaping(cfg))
    ids = [encoder.prompt_ids(p["record"]) for p in prompts]
    torch.manual_seed(setting["seed"])
    gens = tasks.generate(model, tokenizer, ids, setting["max_new_tokens"], batch_size=cfg.micro_batch,
                          synced=synced, temperature=setting["temperature"], top_p=setting["top_p"])
    return [{"id": p["id"], "prompt": p["prompt"], "response": tokenizer.decode(g["ids"], skip_special_tokens=True),
             "rendered_prompt": tokenizer.decode(i), "new_tokens": len(g["ids"]),
             "stopped_at_eos": g["stopped_at_eos"], **setting} for p, i, g in zip(prompts, ids, gens)]


def write(folder: Path, records: list[dict]) -> Path:
    path = Path(folder) / OUTPUT
    rundir.atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from ftgrid.data_prep.catalog import DataError
    from ftgrid.data_prep.prompts import read_prompts
    try:
        cfg = load_cell(args.cell)
        setting = settings(args.max_new_tokens or cfg.max_new_tokens, args.temperature, args.top_p, args.seed)
        prompts = read_prompts(args.prompts, cfg.task)
        out = Path(args.out or cfg.output_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file")
        cfg.micro_batch = args.batch_size
        spec = schema.model_spec(cfg.model)
        if spec.kind != "causal" or cfg.task == "token-classification":
            raise ConfigError(f"generation runs causal language models; {cfg.model} ({spec.kind}) with task "
                              f"{cfg.task!r} is not one")
    except (ConfigError, DataError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)  # a DataError may quote a path with a newline
        return EXIT_BAD_INPUT
    with startup.heavy_imports():
        import torch
        from ftgrid.finetune import models
    tokenizer = models.load_tokenizer(spec, cfg)
    model = models.load_trained(spec, cfg, tokenizer)
    if torch.cuda.is_available():
        model = model.to("cuda")
    records = generate_records(model, tokenizer, cfg, prompts, setting)
    out.mkdir(parents=True, exist_ok=True)
    path = write(out, records)
    print(f"wrote {len(records)} generation(s) to {path} ({'greedy' if not setting['do_sample'] else 'sampled'}, "
          f"max_new_tokens {setting['max_new_tokens']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
