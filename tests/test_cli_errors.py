"""Bad input through the real `pyapp` command: one clear line on stderr, a non-zero exit,
and nothing half-written left in the store."""
import json
import os
import subprocess
import sys

import pytest


def pyapp(store, *args):
    env = dict(os.environ, PYAPP_MODELS_DIR=str(store), PYAPP_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "pyapp", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def assert_one_line_error(r, needle):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("pyapp: error:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def store_is_clean(store):
    return [p.name for p in store.iterdir() if not p.name.startswith(".locks")] == []


@pytest.mark.parametrize("content", [b"", b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40,
                                     b"not a gguf file at all" * 100])
def test_corrupt_gguf(tmp_path, content):
    store = tmp_path / "store"
    store.mkdir()
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(content)
    r = pyapp(store, "import", str(bad), "--name", "broken")
    assert_one_line_error(r, "broken")
    assert store_is_clean(store)


def test_unsupported_architecture(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    folder = tmp_path / "mamba"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    (folder / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    r = pyapp(store, "import", str(folder))
    assert_one_line_error(r, "mamba")
    assert store_is_clean(store)


def test_unknown_pull_name_and_model(tmp_path):
    r = pyapp(tmp_path, "pull", "no-such-model")
    assert_one_line_error(r, "no-such-model")
    r = pyapp(tmp_path, "generate", "no-such-model", "hi")
    assert_one_line_error(r, "not in the store")
    assert list(tmp_path.iterdir()) == [] or store_is_clean(tmp_path)
