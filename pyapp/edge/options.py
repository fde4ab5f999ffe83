"""Options of the edge API, checked before anything runs: an unknown name (with the nearest known
one), a wrong type or an out-of-range value is an :class:`EdgeError` naming the option.

Names are accepted in snake_case (Python) and camelCase (JS): ``max_new_tokens`` / ``maxNewTokens``.
``None`` (JS ``undefined``/``null``) means "not given".
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import EdgeError


@dataclass(frozen=True)
class Opt:
    kind: str                                 # "str" | "int" | "number" | "bool" | "callable"
    check: Callable[[Any], str | None] | None = None   # value -> what is wrong, or None
    choices: tuple = ()


def _min(lo):
    return lambda v: None if v >= lo else f"must be at least {lo}"


def _range(lo, hi, lo_open=False):
    def check(v):
        ok = (lo < v if lo_open else lo <= v) and v <= hi
        return None if ok else f"must be in {'(' if lo_open else '['}{lo}, {hi}]"
    return check


# format: checked against the model's formats once the model is known (api.resolve_format)
_COMMON = {"model": Opt("str"), "backend": Opt("str", choices=("auto", "webgpu", "server")),
           "wait": Opt("bool"), "format": Opt("str"), "gpu_memory": Opt("number", _min(1))}
GENERATE = {**_COMMON, "split": Opt("int", _min(0)), "max_new_tokens": Opt("int", _min(1)),
            "greedy": Opt("bool"), "chat": Opt("bool"), "temperature": Opt("number", _range(0, 100)),
            "top_p": Opt("number", _range(0, 1, lo_open=True)), "top_k": Opt("int", _min(0)),
            "seed": Opt("int", _min(0)), "on_token": Opt("callable"), "progressive": Opt("bool"),
            "pipeline": Opt("bool")}
EMBED = {**_COMMON, "split": Opt("int", _min(0)), "progressive": Opt("bool")}
TOKENIZE = {"model": Opt("str"), "chat": Opt("bool")}
MODEL_ONLY = {"model": Opt("str")}


def snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _typed(name: str, spec: Opt, v: Any) -> Any:
    k = spec.kind
    if k == "callable":
        if not callable(v):
            raise EdgeError(f"option {name} must be a function", "bad_option", name)
        return v
    if k == "bool":
        if not isinstance(v, bool):
            raise EdgeError(f"option {name} must be true or false, not {v!r}", "bad_option", name)
        return v
    if k == "str":
        if not isinstance(v, str) or not v:
            raise EdgeError(f"option {name} must be a non-empty string, not {v!r}", "bad_option", name)
        if spec.choices and v not in spec.choices:
            raise EdgeError(f"option {name} must be one of {', '.join(spec.choices)}, not {v!r}",
                            "bad_option", name)
        return v
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    if k == "int":
        if not number or (isinstance(v, float) and not v.is_integer()):
            raise EdgeError(f"option {name} must be a whole number, not {v!r}", "bad_option", name)
        v = int(v)
    elif not number:
        raise EdgeError(f"option {name} must be a number, not {v!r}", "bad_option", name)
    return v


def check(opts: dict, spec: dict[str, Opt]) -> dict:
    """``opts`` with snake_case names, each checked against ``spec``; unknown names rejected."""
    out = {}
    for given, v in opts.items():
        name = snake(given)
        if name not in spec:
            known = sorted(set(spec) | {camel(n) for n in spec})
            near = difflib.get_close_matches(given, known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else f" (known: {', '.join(sorted(spec))})"
            raise EdgeError(f"unknown option {given}{hint}", "bad_option", given)
        if v is None:
            continue
        v = _typed(given, spec[name], v)
        problem = spec[name].check(v) if spec[name].check else None
        if problem:
            raise EdgeError(f"option {given} {problem}, not {v!r}", "bad_option", given)
        out[name] = v
    return out


def check_split(split: int, n_layers: int, model: str) -> int:
    if split > n_layers:
        raise EdgeError(f"option split must be in 0..{n_layers} for {model}, not {split}",
                        "bad_option", "split")
    return split
