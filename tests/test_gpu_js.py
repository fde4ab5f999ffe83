"""The browser binding's JS (pyapp/gpu/*.js, package data) parses: `node --check` on each
file, and none of it is left inside Python strings of pyapp/gpu."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[1] / "pyapp" / "gpu"


@pytest.mark.skipif(shutil.which("node") is None, reason="no node")
@pytest.mark.parametrize("path", sorted(GPU.glob("*.js")), ids=lambda p: p.name)
def test_js_parses(path):
    r = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_js_is_package_data():
    import tomllib
    cfg = tomllib.loads((GPU.parents[1] / "pyproject.toml").read_text())
    assert "*.js" in cfg["tool"]["setuptools"]["package-data"]["pyapp.gpu"]
    assert list(GPU.glob("*.js"))
    for py in GPU.glob("*.py"):
        assert "=>" not in py.read_text(), f"JS left in {py.name}"
