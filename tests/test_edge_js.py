"""The edge's JavaScript and module structure, on CPython: every ``pyapp/edge/*.js`` (and the page's
``web/app.js``) parses (``node --check``) and ships as package data; no JS longer than a line is
left inside the edge's Python; no import cycle tokenizer <-> chat_template and no library import
of the server app; the option checker's messages; EOS ids from the manifest equal the server's.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from pyapp.edge import jsfiles
from pyapp.edge import options as op
from pyapp.edge.errors import EdgeError, describe

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "pyapp" / "edge"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
@pytest.mark.parametrize("path", sorted(EDGE.glob("*.js")) + [ROOT / "web" / "app.js"], ids=lambda p: p.name)
def test_js_parses(path):
    r = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_js_ships_as_package_data():
    assert set(jsfiles.names()) == {p.stem for p in EDGE.glob("*.js")}
    assert '"pyapp.edge" = ["*.js"]' in (ROOT / "pyproject.toml").read_text()
    assert jsfiles.source("ws").lstrip().startswith("//")


def test_no_js_left_in_edge_python():
    """No string constant in pyapp/edge/*.py longer than one line of JS."""
    for f in EDGE.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "=>" in node.value:
                assert node.value.count("\n") == 0 and len(node.value) < 160, f"{f.name}:{node.lineno}"


def _imports(path):
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            out.add(("." * node.level) + mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_no_import_cycle_and_no_app_import():
    ct = _imports(ROOT / "pyapp" / "chat_template.py")
    assert not any("tokenizer" in i for i in ct), ct
    for f in [ROOT / "pyapp" / "cli.py", *(ROOT / "pyapp" / "edge").glob("*.py")]:
        assert not any(i == "server" or i.startswith("server.") for i in _imports(f)), f


def test_option_errors_name_the_option():
    cases = {("maxNewToken", 5): "unknown option maxNewToken (did you mean maxNewTokens?)",
             ("maxNewTokens", -5): "option maxNewTokens must be at least 1, not -5",
             ("split", "abc"): "option split must be a whole number, not 'abc'",
             ("topP", 1.5): "option topP must be in (0, 1], not 1.5",
             ("greedy", "yes"): "option greedy must be true or false, not 'yes'",
             ("backend", "cuda"): "option backend must be one of auto, webgpu, server, not 'cuda'"}
    for (name, value), msg in cases.items():
        with pytest.raises(EdgeError) as ei:
            op.check({name: value}, op.GENERATE)
        assert str(ei.value) == msg and ei.value.option == name and ei.value.code == "bad_option"
    assert op.check({"maxNewTokens": 4.0, "top_p": 0.5, "temperature": None}, op.GENERATE) == \
        {"max_new_tokens": 4, "top_p": 0.5}


def test_describe_is_one_line_without_traceback():
    try:
        raise ValueError("the prompt is empty\nsecond line")
    except ValueError as e:
        d = describe(e)
    assert d["message"] == "the prompt is empty" and d["code"] == "bad_input" and "Traceback" in d["traceback"]


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2-135m", "minilm-l6"])
def test_eos_ids_from_the_manifest_equal_the_servers(name, monkeypatch):
    """The edge stops on the manifest's eos_ids (EdgeModel); the server on ModelEntry.eos_ids."""
    from pyapp.store import model_path
    if not (Path(model_path(name)) / "model.safetensors").exists():
        pytest.skip(f"{name} not in the store")
    from pyapp.arch import build_model
    from pyapp.edge.api import EdgeModel
    from server.manifest import get_manifest
    from server.runtime import Limits, ModelEntry
    entry = ModelEntry(name, "numpy", Limits())
    man = get_manifest(name, Path(model_path(name)))
    names = {t["name"] for c in man["chunks"] for t in c["tensors"]}
    em = EdgeModel(name, man, build_model(man["config"], names), None)
    assert sorted(em.eos_ids) == sorted(entry.eos_ids)
    gc = Path(model_path(name)) / "generation_config.json"
    if gc.exists():      # generation_config's ids are among them (the bug: they were not)
        import json
        v = json.loads(gc.read_text()).get("eos_token_id")
        assert set(v if isinstance(v, list) else [v]) - {None} <= set(em.eos_ids)
