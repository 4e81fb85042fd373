"""A pretraining corpus that every machine with CPython already has: its own documentation (PSF licence).

The pydoc topics (`pydoc_data.topics`) and the docstrings of the standard library's modules, classes and
functions (tests and demos left out), cut into passages of plain prose. Used to pretrain the small
Pythia-shaped bases (scripts/pretrain_demo_base.py, examples/compute_optimal_lora/study.py) that the
demo and the CPU-scale study fine-tune on other data.
"""
from __future__ import annotations

import json
from pathlib import Path


def documentation_texts() -> list[tuple[str, str]]:
    """(title, text) pairs, sorted, so the corpus is the same on every machine with this Python."""
    import ast
    import sysconfig

    import pydoc_data.topics

    texts = sorted(pydoc_data.topics.topics.items())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "idle_test", "lib2to3", "turtledemo"}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if skip & set(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    texts.append((f"{rel.with_suffix('').as_posix()}.{getattr(node, 'name', '')}".rstrip("."), doc))
    return texts


def write_passages(path: Path, words_per_passage: int = 64) -> int:
    """The documentation as Alpaca rows whose output is a passage (the loss falls on the passage);
    returns the row count."""
    rows = []
    for title, text in documentation_texts():
        words = text.split()
        for i in range(0, len(words), words_per_passage):
            chunk = " ".join(words[i:i + words_per_passage])
            if len(chunk) > 80 and chunk.isascii():
                rows.append({"instruction": f"Python documentation: {title}", "input": "", "output": chunk})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)
