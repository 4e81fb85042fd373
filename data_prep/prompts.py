"""A prompts file for generation: one JSON object a line, read into the task's canonical record (without
its response) so a prompt is rendered exactly as the cell's training rendered its prompts.

    {"prompt": "Define the word ship."}                       # a user turn (sft, dpo)
    {"messages": [{"role": "system", ...}, {"role": "user", ...}]}   # chat turns, ending with the user's
    {"document": "..."}  or  {"prompt": "..."}                # summarization: the text to summarize
    {"id": "q7", ...}                                         # optional; default the line number

Bad input (not JSON, no prompt field, an empty file) is one DataError line naming the file and line.
"""
from __future__ import annotations

import json
from pathlib import Path

from ftgrid.data_prep.catalog import DataError
from ftgrid.data_prep.formats import ROLE_ALIASES

TEXT_FIELDS = {"summarization": ("document", "prompt")}  # other tasks: a user turn
USER_FIELDS = ("prompt", "instruction")


def _item(data, task: str, where: str) -> tuple[dict, str]:
    if not isinstance(data, dict):
        raise DataError(f"{where}: a prompt is a JSON object like {{\"prompt\": \"...\"}}, got {type(data).__name__}")
    if task == "summarization":
        text = next((data[k] for k in TEXT_FIELDS[task] if isinstance(data.get(k), str) and data[k].strip()), None)
        if text is None:
            raise DataError(f"{where}: a summarization prompt needs a \"document\" (or \"prompt\") text")
        return {"document": text.strip(), "summary": ""}, text.strip()
    if "messages" in data:
        turns = data["messages"]
        try:
            messages = [{"role": ROLE_ALIASES[m["role"]], "content": str(m["content"])} for m in turns]
        except (KeyError, TypeError):
            raise DataError(f"{where}: messages must be [{{\"role\": \"user\", \"content\": \"...\"}}, ...] with roles "
                            f"system, user, assistant") from None
        if not messages or messages[-1]["role"] != "user":
            raise DataError(f"{where}: messages must end with a user turn (the model answers it)")
        return {"messages": messages}, messages[-1]["content"]
    text = next((data[k] for k in USER_FIELDS if isinstance(data.get(k), str) and data[k].strip()), None)
    if text is None:
        raise DataError(f"{where}: a prompt needs a \"prompt\" text (or \"messages\")")
    return {"messages": [{"role": "user", "content": text.strip()}]}, text.strip()


def read_prompts(path, task: str = "sft") -> list[dict]:
    """[{"id", "record", "prompt"}]: the canonical record to render and the user's own text."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read prompts file {path}: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"prompts {path} line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e.msg})") from None
        record, text = _item(data, task, where)
        out.append({"id": data.get("id", len(out)), "record": record, "prompt": text})
    if not out:
        raise DataError(f"prompts file {path} holds no prompts (one JSON object a line)")
    return out
