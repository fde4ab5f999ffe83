"""The README's first command from a fresh venv, and `pyapp serve` refusing to serve a page that
cannot boot.

The fresh-venv test (``-m fresh_venv``; ~1-2 min, pip installs from its cache or PyPI) runs
`python3 -m venv` (no system site-packages) and then `scripts/run.sh` with that venv first on
PATH, up to the server answering: the site's pyapp wheel must build without the venv having
setuptools' `wheel`, and the wheel the page is told about must be there with its sha256.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from test_edge_harness import ROOT, free_port

MODEL = "minilm-l6"


def _have_model(name):
    from pyapp.store import ModelNotFound, model_path
    try:
        model_path(name)
        return True
    except ModelNotFound:
        return False


def _wait(url, proc, seconds):
    t0 = time.time()
    while time.time() - t0 < seconds:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


@pytest.mark.fresh_venv
@pytest.mark.skipif(not _have_model(MODEL), reason="MiniLM not in the store")
@pytest.mark.skipif(not (ROOT / "node_modules" / "pyodide").is_dir(), reason="npm deps not installed")
def test_readme_first_command_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "python3"), "-c", "import wheel"], capture_output=True)
    assert r.returncode != 0          # the point: no `wheel` package in a new venv
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", VIRTUAL_ENV=str(venv), OMP_NUM_THREADS="1")
    port = free_port()
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ROOT / "scripts" / "run.sh"), "--port", str(port), "--model", MODEL,
                                 "--no-preload"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        up = _wait(url + "/healthz", proc, 240)
        assert up, log.read_text()[-3000:]
        index = httpx.get(url + "/wheels/index.json").json()
        whl = httpx.get(url + "/wheels/" + index["pyapp"])
        assert whl.status_code == 200
        assert hashlib.sha256(whl.content).hexdigest() == index["wheels"][index["pyapp"]]["sha256"]
        names = zipfile.ZipFile(io.BytesIO(whl.content)).namelist()
        assert "pyapp/edge/api.py" in names and "pyapp/kernels/embed.wgsl" in names
        assert httpx.get(url + "/").status_code == 200
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


@pytest.mark.skipif(not _have_model(MODEL), reason="MiniLM not in the store")
def test_serve_refuses_to_start_when_the_site_cannot_boot(tmp_path):
    """A checkout without node_modules on a machine without npm: the assets cannot be made, so
    `pyapp serve` exits non-zero with one clear line instead of serving a page that fails."""
    repo = tmp_path / "repo"
    for d in ("pyapp", "server"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "web", repo / "web", ignore=shutil.ignore_patterns("vendor", "wheels"))
    for f in ("pyproject.toml", "package.json"):
        shutil.copy(ROOT / f, repo / f)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    os.symlink(sys.executable, bin_ / "python3")
    env = {**os.environ, "PYTHONPATH": str(repo), "PATH": str(bin_)}
    r = subprocess.run([sys.executable, "-m", "pyapp", "serve", "--model", MODEL, "--port", str(free_port()),
                        "--no-preload"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("pyapp serve: error: the site's assets are not ready") and "npm" in last, r.stderr
    assert "Traceback" not in r.stderr
