"""Command-line helpers shared by every command, and the `ftgrid` console command.

    ftgrid grid --models pythia-1.4b,mistral-7b --ranks 16,64 --dry-run
    ftgrid train --cell runs/<sweep>/<cell>/cell.yaml
    ftgrid plan --model mixtral-8x7b --method qlora --gpu a100-80gb --gpus 8 --zero 3
    ftgrid probe | report | fit | data | status ...

Every subcommand is the same program as its checkout form (`python launch/grid.py`, `python -m launch.plan`,
...), with the same flags. Flags work in kebab or snake case (`--micro-batch`, `--micro_batch`).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

EXIT_BAD_INPUT = 2
PROG = None  # "ftgrid <command>" while the console command runs one: usage lines name what was typed


class CliParser(argparse.ArgumentParser):
    """argparse for the kit's commands: a usage error is one `error:` line with a hint and exit 2 (no
    usage dump), and `--snake_case` / `--kebab-case` spellings of a flag are the same flag.

    `aliases` maps other tools' names (snake case, e.g. `learning_rate`) to one of ours (`lr`); `hints`
    maps names we refuse to the one line that says what to use instead."""

    def __init__(self, *args, aliases: dict | None = None, hints: dict | None = None, **kwargs):
        if PROG:
            kwargs["prog"] = PROG
        super().__init__(*args, **kwargs)
        self.flag_aliases = dict(aliases or {})
        self.flag_hints = dict(hints or {})

    def error(self, message):
        from ftgrid.errors import one_line  # a typed newline in an echoed value must not break the line
        sys.stderr.write(f"error: {one_line(message)} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)

    def _get_values(self, action, arg_strings):
        # argparse drops a "--" given as an option's value (`--tasks=--`) and stores an empty list where
        # text belongs; no flag of ours takes "--" as its value
        if action.option_strings and action.nargs is None and "--" in arg_strings:
            self.error(f"argument {'/'.join(action.option_strings)}: '--' is not a value")
        return super()._get_values(action, arg_strings)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        out, rest = [], False
        for token in args:
            rest = rest or token == "--"
            out.append(token if rest else self._canonical_flag(token))
        return super().parse_known_args(out, namespace)

    def _canonical_flag(self, token: str) -> str:
        if not token.startswith("--") or token in self._option_string_actions:
            return token
        flag, eq, value = token.partition("=")
        if flag in self._option_string_actions:
            return token
        key = flag[2:].replace("-", "_")
        if key in self.flag_hints:
            self.error(f"unknown option {flag}: {self.flag_hints[key]}")
        key = self.flag_aliases.get(key, key)
        for candidate in (f"--{key.replace('_', '-')}", f"--{key}"):
            if candidate in self._option_string_actions:
                return candidate + eq + value
        return token


# subcommand -> (module, what it does); each module's main(argv) is its checkout command.
COMMANDS = {
    "grid": ("ftgrid.launch.grid", "expand a grid, plan, render and run or submit its cells"),
    "status": ("ftgrid.launch.grid", "counts per state of a sweep folder, failing cells' log tails"),
    "train": ("ftgrid.finetune.train", "train one cell (the entrypoint every launcher runs)"),
    "plan": ("ftgrid.launch.plan", "predict one cell's GPU memory: will it fit?"),
    "probe": ("ftgrid.launch.probe", "measure the largest micro batch that fits here"),
    "trace": ("ftgrid.launch.trace", "trace one training step on the meta device: the activation peak"),
    "report": ("ftgrid.launch.report", "results table, pivots and plots of a sweep"),
    "fit": ("ftgrid.launch.fit", "scaling-law fit of a results CSV and the compute-optimal allocation"),
    "data": ("ftgrid.data_prep.__main__", "list, preview and cache the data a cell trains on"),
    "generate": ("ftgrid.finetune.generate", "generate from a trained cell on your prompts"),
}


def available_commands() -> dict:
    """The subcommands whose module ships with this install."""
    return {name: entry for name, entry in COMMANDS.items() if importlib.util.find_spec(entry[0]) is not None}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = available_commands()
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(n) for n in commands)
        print("usage: ftgrid COMMAND [flags]   (ftgrid COMMAND --help for its flags)\n\ncommands:")
        for name, (_, what) in commands.items():
            print(f"  {name:<{width}}  {what}")
        return 0 if argv else EXIT_BAD_INPUT
    if argv[0] in ("-V", "--version"):
        from ftgrid import __version__
        print(f"ftgrid {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        from ftgrid.errors import did_you_mean
        sys.stderr.write(f"error: unknown command {name!r}{did_you_mean(name, list(commands))}\n")
        return EXIT_BAD_INPUT
    if name == "status":
        rest = ["--status", *rest]
    global PROG
    PROG = f"ftgrid {name}"
    module = importlib.import_module(commands[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
