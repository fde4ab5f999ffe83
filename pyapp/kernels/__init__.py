"""WGSL kernels, shipped as package data.  `render(name, **subs)` fills a template.

Templates use `${NAME}` placeholders (string.Template; WGSL never uses `$`).
Every kernel is prefixed with `common.wgsl`: the per-step uniform `p`
(token count, position, sampling parameters) at @binding(0).

`formats/<name>.wgsl` and `formats/<name>.vec4.wgsl` are the weight loaders of each
weight format (`pyapp.formats.WeightFormat.wgsl` names them); `snippet` fills them in.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from string import Template


@lru_cache(maxsize=None)
def source(name: str) -> str:
    """Raw text of `name`.wgsl."""
    return resources.files(__name__).joinpath(*f"{name}.wgsl".split("/")).read_text(encoding="utf-8")


def exists(name: str) -> bool:
    return resources.files(__name__).joinpath(*f"{name}.wgsl".split("/")).is_file()


def snippet(name: str, **subs) -> str:
    """The template `name` with `subs` substituted, without the common prelude."""
    return Template(source(name)).substitute({k: str(v) for k, v in subs.items()})


def render(name: str, prelude: str = "", **subs) -> str:
    """common.wgsl + prelude + the template `name` with `subs` substituted."""
    body = Template(source(name)).substitute({k: str(v) for k, v in subs.items()})
    # directives (`enable subgroups;`, a loader's `enable f16;`) must precede every declaration;
    # one of each (several f16 loaders in one kernel each bring theirs)
    lines = body.split("\n")
    enables = list(dict.fromkeys(ln.strip() for ln in lines if ln.strip().startswith("enable ")))
    body = "\n".join(ln for ln in lines if not ln.strip().startswith("enable "))
    return "\n".join(enables + [prelude + source("common"), body])


def names():
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".wgsl"))
