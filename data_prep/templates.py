"""Chat templates and the prompt/response split of a conversation.

`template=None` uses the tokenizer's own chat template when it has one, else `alpaca`. A named
template (`alpaca`, `chatml`, `plain`) is a Jinja string rendered by the tokenizer's own
`apply_chat_template(..., chat_template=...)`, so both paths behave the same. A path to a Jinja file
(or an inline Jinja string) is the user's own template: a variable it uses that a chat template is
never given (a typo like `mesages`) fails with one line before anything is tokenized.

`segments(tokenizer, messages, template)` cuts a rendered conversation into (text, trainable)
pieces: assistant turns are trainable, everything else (system, user, the template's own markup)
is not. It renders prefixes of the conversation and requires each to extend the previous one; a
template that rewrites earlier turns (some strip old reasoning, for instance) fails with one line.
"""
from __future__ import annotations

import os
from pathlib import Path

from ftgrid.data_prep.catalog import DataError

# Each assistant turn ends with eos so the model learns to stop (pad != eos, see FACTS.md).
NAMED = {
    "alpaca": (
        "{%- for m in messages %}"
        "{%- if m['role'] == 'system' %}{{- m['content'] + '\n\n' }}"
        "{%- elif m['role'] == 'user' %}{{- '### Instruction:\n' + m['content'] + '\n\n' }}"
        "{%- elif m['role'] == 'assistant' %}{{- '### Response:\n' + m['content'] + eos_token }}"
        "{%- if not loop.last %}{{- '\n\n' }}{%- endif %}"
        "{%- else %}{{- raise_exception('Unknown role: ' + m['role']) }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '### Response:\n' }}{%- endif %}"
    ),
    "chatml": (  # <|im_end|> closes every turn; eos follows the assistant's so generation stops
        "{%- for m in messages %}{%- if not loop.first %}{{- '\n' }}{%- endif %}"
        "{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' }}"
        "{%- if m['role'] == 'assistant' %}{{- eos_token }}{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{%- if messages %}{{- '\n' }}{%- endif %}"
        "{{- '<|im_start|>assistant\n' }}{%- endif %}"
    ),
    "plain": (  # no markup at all: turns separated by blank lines (base models, continued pre-training)
        "{%- for m in messages %}{{- m['content'] }}"
        "{%- if m['role'] == 'assistant' %}{{- eos_token }}{%- endif %}"
        "{%- if not loop.last %}{{- '\n\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt and messages %}{{- '\n\n' }}{%- endif %}"
    ),
}
DEFAULT_NAMED = "alpaca"
# What a chat template is rendered with (transformers' apply_chat_template: the messages, the flags, the
# tokenizer's special tokens) and Jinja's own globals; any other free variable would render as nothing.
TEMPLATE_VARIABLES = frozenset({
    "messages", "add_generation_prompt", "tools", "documents", "raise_exception", "strftime_now", "bos_token",
    "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token", "additional_special_tokens",
    "range", "dict", "lipsum", "cycler", "joiner", "namespace"})


def check_variables(jinja: str, where: str) -> None:
    """Refuse a user template with a syntax error or a variable it is never given (StrictUndefined, but
    before rendering: the first row would otherwise be the one to find it)."""
    import jinja2
    from jinja2 import meta

    try:
        names = meta.find_undeclared_variables(jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(jinja))
    except jinja2.TemplateSyntaxError as e:
        raise DataError(f"template {where} line {e.lineno}: {e.message}") from None
    unknown = sorted(names - TEMPLATE_VARIABLES)
    if unknown:
        raise DataError(f"template {where} uses undefined {', '.join(unknown)}; a chat template is given: "
                        f"messages, add_generation_prompt and the special tokens (bos_token, eos_token, ...)")


def resolve(tokenizer, template: str | None) -> tuple[str, str]:
    """(template name for the cache key, Jinja text). `None`/"auto" -> the tokenizer's own, else alpaca."""
    if template in (None, "", "auto", "tokenizer"):
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: the default one
            own = own.get("default")
        if own:
            return "tokenizer", own
        if template == "tokenizer":
            raise DataError("the tokenizer has no chat template of its own; name one: "
                            f"{', '.join(NAMED)}")
        template = DEFAULT_NAMED
    if template in NAMED:
        return template, NAMED[template]
    if "{%" in template or "{{" in template:  # a Jinja string given inline
        check_variables(template, "(inline)")
        return "custom", template
    if os.path.isfile(template):
        try:
            text = Path(template).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read template {template}: {e}") from None
        check_variables(text, template)
        return f"file:{Path(template).name}", text
    raise DataError(f"unknown chat template {template!r}; valid: tokenizer (its own), {', '.join(NAMED)} or a "
                    f"path to a Jinja file")


def adds_bos(tokenizer) -> bool:
    """Does the tokenizer put bos in front of what it encodes (Llama-style)?"""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def needs_bos(tokenizer, name: str) -> bool:
    """Named templates carry no bos text: add bos where the tokenizer itself would (Llama-style)."""
    return name != "tokenizer" and adds_bos(tokenizer)


class _Renderer:
    """Renders with the compiled Jinja template directly (what apply_chat_template does inside, less its
    per-call overhead); falls back to apply_chat_template where that internal is not available.
    Picklable (the compiled template is rebuilt in each worker process)."""

    def __init__(self, tokenizer, jinja: str):
        self.tokenizer, self.jinja = tokenizer, jinja
        self.specials = dict(tokenizer.special_tokens_map)
        self._compiled = None

    def __getstate__(self):
        return {**self.__dict__, "_compiled": None}

    def __call__(self, messages: list[dict], generation: bool) -> str:
        if self._compiled is None:
            try:
                from transformers.utils.chat_template_utils import _compile_jinja_template

                self._compiled = _compile_jinja_template(self.jinja)
            except ImportError:
                self._compiled = False
        if self._compiled is False:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.jinja, tokenize=False,
                                                      add_generation_prompt=generation)
        return self._compiled.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=generation, **self.specials)


_RENDERERS: dict = {}


def _render(tokenizer, jinja: str, messages: list[dict], generation: bool) -> str:
    key = (id(tokenizer), jinja)
    r = _RENDERERS.get(key)
    if r is None or r.tokenizer is not tokenizer:
        r = _RENDERERS[key] = _Renderer(tokenizer, jinja)
    return r(messages, generation)


def segments(tokenizer, jinja: str, messages: list[dict], train_on: str = "responses") -> list[tuple[str, bool]]:
    """(text, trainable) pieces whose concatenation is the rendered conversation.

    train_on: `responses` (every assistant turn), `last` (the final assistant turn only), `all`.
    """
    out: list[tuple[str, bool]] = []
    done = ""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, jinja, messages[:i], generation=True)
        full = _render(tokenizer, jinja, messages[: i + 1], generation=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError("the chat template does not render a conversation as a growing prefix (the "
                            "response cannot be told from the prompt); pick a named template: "
                            f"{', '.join(NAMED)}")
        trainable = train_on == "all" or train_on == "responses" or (train_on == "last" and i == last)
        out.append((prompt[len(done):], train_on == "all"))
        out.append((full[len(prompt):], trainable))
        done = full
    return [(t, k) for t, k in out if t]


def prompt_and_response(tokenizer, jinja: str, messages: list[dict], response: str) -> tuple[str, str]:
    """Text prompt (with the generation prompt) and the response as the template renders it (with eos)."""
    prompt = _render(tokenizer, jinja, messages, generation=True)
    full = _render(tokenizer, jinja, messages + [{"role": "assistant", "content": response}], generation=False)
    if not full.startswith(prompt):
        raise DataError("the chat template does not extend the prompt with the response; pick a named "
                        f"template: {', '.join(NAMED)}")
    return prompt, full[len(prompt):]
