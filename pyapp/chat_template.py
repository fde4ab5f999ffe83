"""Chat templates rendered the way ``transformers`` renders them, in CPython and in Pyodide.

CPython renders with ``jinja2`` in the same sandboxed environment ``transformers`` builds
(``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, ``loopcontrols``,
its ``tojson`` filter and the ``raise_exception``/``strftime_now`` globals).

Pyodide has no ``jinja2`` in its core, so there the template runs on ``@huggingface/jinja``
(the npm package the site vendors as ``/vendor/jinja/index.js``), which applies
``trim_blocks``/``lstrip_blocks`` itself and defines ``raise_exception``/``strftime_now``.
The context crosses into JavaScript as one JSON string (so ``None`` becomes ``null``, as
jinja2 sees it), and only the rendered string comes back.

Stdlib only: ``jinja2`` is imported lazily and only on CPython.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from functools import lru_cache
from typing import Any

IS_PYODIDE = sys.platform == "emscripten"

# The names transformers passes to the template (``special_tokens_map``), in its order.
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class TemplateError(Exception):
    """Raised by ``raise_exception(...)`` inside a template, or when rendering fails."""


def special_tokens_from_config(config: dict | None) -> dict[str, str]:
    """``bos_token``... as strings, from a ``tokenizer_config.json`` (tokens may be AddedToken dicts)."""
    out: dict[str, str] = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = (config or {}).get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            out[name] = str(value)
    return out


def chat_template_from_config(config: dict | None, name: str | None = None) -> str | None:
    """The template string of a ``tokenizer_config.json`` (a string, or a list of named templates)."""
    tpl = (config or {}).get("chat_template")
    if tpl is None or isinstance(tpl, str):
        return tpl
    if isinstance(tpl, dict):  # {"default": ..., "tool_use": ...}
        named = tpl
    else:  # [{"name": "default", "template": "..."}, ...]
        named = {t["name"]: t["template"] for t in tpl}
    return named.get(name or "default") or (next(iter(named.values())) if named else None)


def _normalize_messages(messages: list[dict]) -> list[dict]:
    """What transformers does to the conversation before rendering it."""
    out = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise TypeError(f"Chat messages should be dicts, but got {msg!r}.")
        msg = {k: v for k, v in msg.items() if v is not None}  # drop None values
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


def render(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str] | None = None,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **kwargs: Any,
) -> str:
    """Render ``template`` for one conversation, as ``apply_chat_template(tokenize=False)`` does."""
    if not messages:
        raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
    context = {**(special_tokens or {}), **kwargs}
    context["messages"] = _normalize_messages(list(messages))
    context["tools"] = tools
    context["documents"] = documents
    context["add_generation_prompt"] = bool(add_generation_prompt)
    if IS_PYODIDE:
        return _render_js(template, context)
    return _render_jinja2(template, context)


# --------------------------------------------------------------------------- CPython: jinja2


@lru_cache(maxsize=16)
def _compile_jinja2(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


def _render_jinja2(template: str, context: dict) -> str:
    import jinja2

    try:
        return _compile_jinja2(template).render(**context)
    except jinja2.exceptions.TemplateError as exc:
        raise TemplateError(str(exc)) from exc


# --------------------------------------------------------------------------- Pyodide: @huggingface/jinja

_js_templates: dict[str, Any] = {}
_js_jinja: Any = None     # the @huggingface/jinja module object; pyapp.tokenizer.load_js_modules sets it


def use_js_jinja(module: Any) -> None:
    """The @huggingface/jinja ES module (a JsProxy) that renders templates in Pyodide."""
    global _js_jinja
    _js_jinja = module


def _render_js(template: str, context: dict) -> str:
    jinja = _js_jinja
    if jinja is None:
        raise RuntimeError("the @huggingface/jinja module is not loaded: call "
                           "`await pyapp.tokenizer.load_js_modules(...)` first")
    compiled = _js_templates.get(template)
    if compiled is None:
        if len(_js_templates) >= 16:
            _js_templates.clear()
        compiled = _js_templates[template] = jinja.Template.new(template)
    import js  # type: ignore[import-not-found]

    ctx = js.JSON.parse(json.dumps(context))
    try:
        return str(compiled.render(ctx))
    except Exception as exc:  # JsException
        raise TemplateError(str(exc)) from exc
