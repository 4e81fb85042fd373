"""Format adapters: a source layout -> one canonical record per task.

Canonical records (what every adapter returns; `None` rejects a row, counted as `invalid`):

| task                 | record                                                                    |
|----------------------|---------------------------------------------------------------------------|
| sft                  | `{"messages": [{"role": ..., "content": str}, ...]}` (system/user/assistant; last: assistant) |
| dpo                  | `{"messages": [prompt turns], "chosen": str, "rejected": str}`            |
| token-classification | `{"text": str, "spans": [{"start": int, "end": int, "label": str}, ...]}` |
| summarization        | `{"document": str, "summary": str}`                                       |

A format is detected from the columns (the first, most specific match in `FORMATS` order wins; a
few also look at the first row, e.g. LIMA's list of strings vs ShareGPT's list of dicts), or named
(`formats.adapt(ds, "dolly")`). An unknown layout fails with one line: the columns found and the
layouts expected. Most adapters are row functions; `oasst1` works on the whole table (message trees
-> the rank-0 path through each tree).

A file in no known layout is mapped onto one by renaming its columns (`columns:
instruction=Input,output=Output` makes an Alpaca table of `Input`/`Output`; see `rename_columns`).
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Callable

from ftgrid.data_prep.catalog import DataError

TASKS = ("sft", "dpo", "token-classification", "summarization")
SUMMARIZE_PROMPT = "Summarize the following text.\n\n{document}"


def _s(value) -> str:
    return "" if value is None else str(value).strip()


def _turns(*pairs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def _sft(messages: list[dict]) -> dict | None:
    """Validate a conversation: non-empty contents, ends with an assistant turn, has a user turn."""
    messages = [{"role": m["role"], "content": _s(m["content"])} for m in messages]
    while messages and messages[-1]["role"] != "assistant":  # trailing user turns teach nothing
        messages.pop()
    if not messages or not any(m["role"] == "user" for m in messages):
        return None
    if any(not m["content"] for m in messages if m["role"] != "system"):
        return None
    return {"messages": [m for m in messages if m["content"]]}


# --------------------------------------------------------------------------- instruction / chat (sft)


def alpaca(row):  # Alpaca, alpaca-cleaned, WizardLM evol-instruct 70k (no input column)
    user = _s(row["instruction"])
    if _s(row.get("input")):
        user = f"{user}\n\n{_s(row['input'])}"
    return _sft(_turns(("user", user), ("assistant", row["output"])))


def dolly(row):  # databricks-dolly-15k: instruction / context / response / category
    user = _s(row["instruction"])
    if _s(row.get("context")):
        user = f"{user}\n\n{_s(row['context'])}"
    return _sft(_turns(("user", user), ("assistant", row["response"])))


def openorca(row):  # Open-Orca/OpenOrca: id / system_prompt / question / response
    turns = [("system", _s(row.get("system_prompt")))] if _s(row.get("system_prompt")) else []
    return _sft(_turns(*turns, ("user", row["question"]), ("assistant", row["response"])))


ROLE_ALIASES = {"human": "user", "user": "user", "prompter": "user", "gpt": "assistant",
                "assistant": "assistant", "chatgpt": "assistant", "bot": "assistant", "model": "assistant",
                "system": "system"}


def _prompt_turns(prompt) -> list[dict] | None:
    """A prompt as text (one user turn), or as a message list [{role, content}]; None when malformed."""
    if not isinstance(prompt, list):
        return _turns(("user", prompt))
    try:
        return [{"role": ROLE_ALIASES.get(m["role"], m["role"]), "content": m["content"]} for m in prompt]
    except (KeyError, TypeError):
        return None


def prompt_completion(row):  # TRL's prompt-completion layout: text, or message lists (conversational)
    turns, completion = _prompt_turns(row["prompt"]), row["completion"]
    if turns is None or isinstance(completion, list) and not completion:
        return None
    answer = _last_assistant(completion) if isinstance(completion, list) else completion
    return _sft([*turns, {"role": "assistant", "content": answer}])


def _question_answer(question: str, answer: str) -> Callable[[dict], dict | None]:
    """The plainest instruction layout: one column asks, one answers (GSM8K's question / answer, ...)."""
    def adapt(row):
        return _sft(_turns(("user", row[question]), ("assistant", row[answer])))
    return adapt


def messages(row):  # UltraChat-200k (prompt / prompt_id / messages), any `messages` list
    try:
        turns = [{"role": ROLE_ALIASES[m["role"]], "content": m["content"]} for m in row["messages"]]
    except KeyError:
        return None
    return _sft(turns)


def sharegpt(row):  # Evol-Instruct V2 196k and other ShareGPT dumps: conversations [{from, value}]
    try:
        turns = [{"role": ROLE_ALIASES[m["from"]], "content": m["value"]} for m in row["conversations"]]
    except (KeyError, TypeError):
        return None
    return _sft(turns)


def lima(row):  # GAIR/lima: conversations = [user, assistant, user, assistant, ...] as plain strings
    convo = row["conversations"]
    if not convo or not all(isinstance(t, str) for t in convo):
        return None
    return _sft([{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(convo)])


def platypus(row):  # garage-bAInd/Open-Platypus: input / output / instruction / data_source
    return alpaca(row)


def _hc3(row, key):  # Hello-SimpleAI/HC3: question / human_answers / chatgpt_answers
    answers = [a for a in (row.get(key) or []) if _s(a)]
    if not answers:
        return None
    return _sft(_turns(("user", row["question"]), ("assistant", answers[0])))


def hc3(row):
    return _hc3(row, "human_answers")


def hc3_chatgpt(row):
    return _hc3(row, "chatgpt_answers")


def oasst(ds):
    """OpenAssistant/oasst1 (flat message table) -> one conversation per tree: from the root prompt,
    follow the best-ranked reply (rank 0; unranked replies after ranked ones, then by message id)."""
    rows = ds.to_list()
    children: dict = {}
    roots = []
    for r in rows:
        if r.get("deleted") or r.get("review_result") is False:
            continue
        if r.get("parent_id") in (None, ""):
            roots.append(r)
        else:
            children.setdefault(r["parent_id"], []).append(r)

    def best(replies):
        return min(replies, key=lambda r: (r.get("rank") is None, r.get("rank") or 0, r["message_id"]))

    out = []
    for root in sorted(roots, key=lambda r: (r["message_tree_id"], r["message_id"])):
        path, node = [root], root
        while children.get(node["message_id"]):
            node = best(children[node["message_id"]])
            path.append(node)
        record = _sft([{"role": ROLE_ALIASES.get(m["role"], m["role"]), "content": m["text"]} for m in path])
        out.append(record)
    return out


# --------------------------------------------------------------------------- preference pairs (dpo)


def _last_assistant(value) -> str:
    """chosen/rejected as text, or as a message list whose last turn is the response (ultrafeedback)."""
    if isinstance(value, list):
        return _s(value[-1]["content"]) if value and value[-1].get("role") == "assistant" else ""
    return _s(value)


def _dpo(prompt_turns, chosen, rejected):
    chosen, rejected = _last_assistant(chosen), _last_assistant(rejected)
    prompt_turns = [m for m in prompt_turns if _s(m["content"])]
    if not chosen or not rejected or chosen == rejected or not any(m["role"] == "user" for m in prompt_turns):
        return None
    return {"messages": [{"role": m["role"], "content": _s(m["content"])} for m in prompt_turns],
            "chosen": chosen, "rejected": rejected}


def pairs(row):  # prompt / chosen / rejected (text, or message lists as in ultrafeedback_binarized)
    turns = _prompt_turns(row["prompt"])
    return None if turns is None else _dpo(turns, row["chosen"], row["rejected"])


HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _dialogue(value) -> list[dict] | None:
    """A whole dialogue: a message list, or Anthropic HH text ("\n\nHuman: ...\n\nAssistant: ...")."""
    if isinstance(value, list):
        return _prompt_turns(value)
    parts = HH_TURN.split("\n\n" + _s(value))[1:]  # [role, text, role, text, ...]
    return [{"role": ROLE_ALIASES[role.lower()], "content": text} for role, text in zip(parts[::2], parts[1::2])]


def implicit_pairs(row):  # chosen / rejected as whole dialogues (Anthropic/hh-rlhf; TRL's implicit prompt)
    chosen, rejected = _dialogue(row["chosen"]), _dialogue(row["rejected"])
    if not chosen or not rejected or chosen[:-1] != rejected[:-1] or \
            {chosen[-1]["role"], rejected[-1]["role"]} != {"assistant"}:
        return None  # the prompt is the turns both share; only the last (assistant) turn may differ
    return _dpo(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])


def orca_dpo(row):  # Intel/orca_dpo_pairs: system / question / chosen / rejected
    turns = [("system", _s(row.get("system")))] if _s(row.get("system")) else []
    return _dpo(_turns(*turns, ("user", row["question"])), row["chosen"], row["rejected"])


# --------------------------------------------------------------------------- token classification


def _spans(items) -> list[dict]:
    out = []
    for it in items:
        if isinstance(it, dict):
            start, end, label = it["start"], it["end"], it["label"]
        else:  # [start, end, label] as in pii-masking-200k's span_labels
            start, end, label = it
        if label in (None, "", "O"):
            continue
        out.append({"start": int(start), "end": int(end), "label": str(label)})
    return sorted(out, key=lambda s: (s["start"], s["end"]))


def _valid_spans(text: str, spans: list[dict]) -> bool:
    last = 0
    for s in spans:
        if not (last <= s["start"] < s["end"] <= len(text)):
            return False  # out of range or overlapping
        last = s["end"]
    return True


def pii(row):  # ai4privacy/pii-masking-200k: source_text + privacy_mask [{value, start, end, label}]
    mask = row.get("privacy_mask")
    if isinstance(mask, str):  # some exports store it as a JSON / Python literal string
        mask = json.loads(mask) if mask.strip().startswith("[{\"") else ast.literal_eval(mask)
    text = row["source_text"] or ""
    spans = _spans(mask or [])
    return {"text": text, "spans": spans} if text.strip() and _valid_spans(text, spans) else None


def spans(row):  # the canonical layout itself: text + spans [{start, end, label}]
    text = row["text"] or ""
    found = _spans(row["spans"] or [])
    return {"text": text, "spans": found} if text.strip() and _valid_spans(text, found) else None


# --------------------------------------------------------------------------- summarization


def _summ(document, summary):
    document, summary = _s(document), _s(summary)
    return {"document": document, "summary": summary} if document and summary else None


def _summary_of(document: str) -> Callable[[dict], dict | None]:
    """A `summary` column for the text in column `document` (SAMSum's dialogue, BillSum's text, ...)."""
    def adapt(row):
        return _summ(row[document], row["summary"])
    return adapt


def cnn_dailymail(row):  # cnn_dailymail 3.0.0: article / highlights / id
    return _summ(row["article"], row["highlights"])


def xsum(row):  # EdinburghNLP/xsum: document / summary / id
    return _summ(row["document"], row["summary"])


def peer_review(row):  # PeerSum-style: review_contents (list) + meta_review (+ paper_title, paper_abstract)
    reviews = [_s(r) for r in (row.get("review_contents") or row.get("reviews") or []) if _s(r)]
    if not reviews:
        return None
    head = f"Title: {_s(row['paper_title'])}\n\n" if _s(row.get("paper_title")) else ""
    body = "\n\n".join(f"Review {i + 1}:\n{r}" for i, r in enumerate(reviews))
    return _summ(head + body, row["meta_review"])


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Format:
    name: str
    task: str
    columns: frozenset            # columns that must be present
    fn: Callable                  # row -> record | None, or (table) the Dataset -> list of records
    table: bool = False           # fn takes the whole Dataset (e.g. oasst1 trees)
    check: Callable | None = None  # (first row) -> bool, to tell apart layouts with the same columns
    source: str = ""              # the public data set whose layout this is


def _first_is(kind):
    def check(row):
        convo = row.get("conversations") or []
        return bool(convo) and isinstance(convo[0], kind)
    return check


# Order matters for detection: the most specific layouts first.
FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("oasst1", "sft", frozenset({"message_id", "parent_id", "message_tree_id", "role", "text"}), oasst,
           table=True, source="OpenAssistant/oasst1"),
    Format("orca-dpo", "dpo", frozenset({"system", "question", "chosen", "rejected"}), orca_dpo,
           source="Intel/orca_dpo_pairs"),
    Format("pairs", "dpo", frozenset({"prompt", "chosen", "rejected"}), pairs,
           source="prompt/chosen/rejected (e.g. HuggingFaceH4/ultrafeedback_binarized)"),
    Format("hh-rlhf", "dpo", frozenset({"chosen", "rejected"}), implicit_pairs,
           source="Anthropic/hh-rlhf; chosen/rejected dialogues sharing their prompt (TRL's implicit prompt)"),
    Format("openorca", "sft", frozenset({"system_prompt", "question", "response"}), openorca,
           source="Open-Orca/OpenOrca"),
    Format("hc3", "sft", frozenset({"question", "human_answers", "chatgpt_answers"}), hc3,
           source="Hello-SimpleAI/HC3 (human answers)"),
    Format("hc3-chatgpt", "sft", frozenset({"question", "human_answers", "chatgpt_answers"}), hc3_chatgpt,
           source="Hello-SimpleAI/HC3 (ChatGPT answers; named only)"),
    Format("dolly", "sft", frozenset({"instruction", "context", "response"}), dolly,
           source="databricks/databricks-dolly-15k"),
    Format("platypus", "sft", frozenset({"instruction", "input", "output", "data_source"}), platypus,
           source="garage-bAInd/Open-Platypus"),
    Format("alpaca", "sft", frozenset({"instruction", "output"}), alpaca,
           source="tatsu-lab/alpaca, yahma/alpaca-cleaned, WizardLM evol_instruct_70k"),
    Format("messages", "sft", frozenset({"messages"}), messages, source="HuggingFaceH4/ultrachat_200k"),
    Format("evol-instruct", "sft", frozenset({"conversations"}), sharegpt, check=_first_is(dict),
           source="WizardLMTeam/WizardLM_evol_instruct_V2_196k (ShareGPT layout)"),
    Format("lima", "sft", frozenset({"conversations"}), lima, check=_first_is(str), source="GAIR/lima"),
    # The plainest layouts come last: a more specific one above that matches wins.
    Format("prompt-completion", "sft", frozenset({"prompt", "completion"}), prompt_completion,
           source="TRL's prompt-completion layout (text or message lists)"),
    Format("prompt-response", "sft", frozenset({"prompt", "response"}), _question_answer("prompt", "response"),
           source="prompt / response"),
    Format("instruction-response", "sft", frozenset({"instruction", "response"}),
           _question_answer("instruction", "response"), source="instruction / response (Dolly without context)"),
    Format("question-answer", "sft", frozenset({"question", "answer"}), _question_answer("question", "answer"),
           source="openai/gsm8k and other question / answer sets"),
    Format("input-output", "sft", frozenset({"input", "output"}), _question_answer("input", "output"),
           source="input / output"),
    Format("pii", "token-classification", frozenset({"source_text", "privacy_mask"}), pii,
           source="ai4privacy/pii-masking-200k"),
    Format("spans", "token-classification", frozenset({"text", "spans"}), spans, source="text + spans"),
    Format("cnn_dailymail", "summarization", frozenset({"article", "highlights"}), cnn_dailymail,
           source="abisee/cnn_dailymail"),
    Format("xsum", "summarization", frozenset({"document", "summary"}), xsum, source="EdinburghNLP/xsum"),
    Format("peer-review", "summarization", frozenset({"review_contents", "meta_review"}), peer_review,
           source="oaimli/PeerSum (reviews -> meta-review)"),
    Format("samsum", "summarization", frozenset({"dialogue", "summary"}), _summary_of("dialogue"),
           source="knkarthick/samsum, knkarthick/dialogsum"),
    Format("text-summary", "summarization", frozenset({"text", "summary"}), _summary_of("text"),
           source="FiscalNote/billsum and other text / summary sets"),
]}
ALIASES = {"alpaca-cleaned": "alpaca", "ultrachat": "messages", "sharegpt": "evol-instruct",
           "orca_dpo_pairs": "orca-dpo", "oasst": "oasst1", "open-platypus": "platypus",
           "dolly-15k": "dolly", "pii-masking": "pii", "cnn": "cnn_dailymail", "peersum": "peer-review"}
NAMED_ONLY = {"hc3-chatgpt"}


def rename_columns(ds, mapping: dict[str, str], label: str = "the dataset"):
    """`ds` with columns renamed {source: layout name} (schema.parse_columns). A source column that is not
    there, or a layout name the table already has under another column, is one line naming the columns."""
    if not mapping:
        return ds
    have = list(ds.column_names)
    missing = [source for source in mapping if source not in have]
    if missing:
        raise DataError(f"columns: {label} has no column {missing[0]!r}; its columns: {', '.join(have)}")
    taken = [t for t in mapping.values() if t in have and t not in mapping]
    if taken:
        raise DataError(f"columns: {label} already has a column {taken[0]!r}; map that one too or drop it")
    return ds.rename_columns(mapping)


def _expected(task: str | None) -> str:
    return "; ".join(f"{f.name}: {'+'.join(sorted(f.columns))}" for f in FORMATS.values()
                     if f.name not in NAMED_ONLY and (task is None or f.task == task))


def detect(columns, first_row: dict | None = None, task: str | None = None) -> str:
    """The format name for these columns (and first row), preferring formats of `task`."""
    columns = set(columns)
    found = [f for f in FORMATS.values() if f.name not in NAMED_ONLY and f.columns <= columns
             and (f.check is None or first_row is None or f.check(first_row))]
    if task:
        for f in found:
            if f.task == task:
                return f.name
        if found:
            raise DataError(f"columns {', '.join(sorted(columns))} look like format {found[0].name!r} (task "
                            f"{found[0].task}), not a {task} layout; expected {_expected(task)}")
    if found:
        return found[0].name
    raise DataError(f"no known format matches columns {', '.join(sorted(columns)) or '(none)'}; "
                    f"expected {_expected(task)}; or map yours onto one with columns (e.g. "
                    f"--columns instruction=Input,output=Output)")


def get(name: str, columns, first_row: dict | None = None, task: str | None = None) -> Format:
    if name in (None, "", "auto"):
        name = detect(columns, first_row, task)
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise DataError(f"unknown format {name!r}; valid: {', '.join([*FORMATS, *ALIASES])}")
    fmt = FORMATS[name]
    missing = fmt.columns - set(columns)
    if missing:
        raise DataError(f"format {name!r} needs columns {', '.join(sorted(missing))}; found "
                        f"{', '.join(sorted(columns))}")
    if task and fmt.task != task:
        raise DataError(f"format {name!r} is {fmt.task} data, not {task}")
    return fmt


def adapter(name: str, columns) -> Callable[[dict], dict]:
    """Row function of a (row-wise) format; kept for older callers."""
    fmt = get(name, columns)
    if fmt.table:
        raise DataError(f"format {fmt.name!r} converts whole tables; use formats.canonical()")
    return fmt.fn


def dump(record: dict | None) -> str:
    """A canonical record as its JSON text ("" for a rejected row): the unit of dedup and caching."""
    return "" if record is None else json.dumps(record, ensure_ascii=False, sort_keys=True)


def digest(text: str) -> str:
    """Exact-duplicate key of a dumped record ("" for a rejected row)."""
    return hashlib.sha1(text.encode()).hexdigest() if text else ""


# What an adapter raises on a row whose values have another shape than its layout's (a number where text
# goes, text where a message list goes, a span that is not a triple): a file decides its column types.
ROW_SHAPE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, SyntaxError)


def adapt_row(fn: Callable[[dict], dict | None], row: dict) -> dict | None:
    """A row's canonical record, or None: rejected by its adapter, or of a shape the adapter cannot read
    (counted `invalid` like any rejected row, instead of failing the whole data set's preparation)."""
    try:
        return fn(row)
    except ROW_SHAPE_ERRORS:
        return None


class _RowBatch:  # picklable batched map function (num_proc > 1)
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, batch):
        n = len(next(iter(batch.values())))
        rows = ({k: v[i] for k, v in batch.items()} for i in range(n))
        records = [dump(adapt_row(self.fn, r)) for r in rows]
        return {"record": records, "key": [digest(r) for r in records]}


def canonical(ds, fmt: Format, num_proc: int | None = None, fingerprint: str | None = None, **map_kwargs):
    """A datasets.Dataset with columns `record` (each row's canonical record as JSON, "" = rejected) and
    `key` (its digest, for exact-duplicate removal)."""
    import datasets

    if fmt.table:
        records = [dump(r) for r in fmt.fn(ds)]
        return datasets.Dataset.from_dict({"record": records, "key": [digest(r) for r in records]})
    map_kwargs = map_kwargs or {"keep_in_memory": True, "load_from_cache_file": False}
    return ds.map(_RowBatch(fmt.fn), batched=True, remove_columns=ds.column_names, num_proc=num_proc,
                  new_fingerprint=fingerprint, desc=f"format {fmt.name}", **map_kwargs)


def records(ds, fmt: Format) -> list[dict]:
    """Canonical records of a (small) Dataset, rejected rows left out: for tests and inspection."""
    return [json.loads(r) for r in canonical(ds, fmt)["record"] if r]
