"""`pyapp build-site` output, checked file by file against the store (no browser): the default
format is the model's smallest, no file under models/ is over --max-file-size, and the files
put back together (chunk pieces, tokenizer parts) are the store's bytes, read through the
safetensors header rather than the manifest code that cut them."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from test_edge_harness import ROOT, have_models

pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not have_models("smollm2-135m"), reason="SmolLM2 not in the store")]

SMOL = "smollm2-135m"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
CAP = 1_000_000          # not a power of two, not a multiple of any block or row size


def build(out, *args):
    return subprocess.run([sys.executable, "-m", "pyapp", "build-site", str(out), "--model", SMOL, *args],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site-cap")
    r = build(out, "--max-file-size", str(CAP))
    assert r.returncode == 0, r.stderr
    return out


def test_small_cap_every_file_under_it_and_bytes_reassemble(site):
    from pyapp.store import model_path
    from pyapp.weightfile import read_safetensors_header
    m = json.loads((site / "models" / SMOL / "manifest.json").read_text())
    assert m["dtype"] == "q4_1"                     # the default: the smallest SmolLM2 has
    files = [p for p in (site / "models" / SMOL).rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert files and max(p.stat().st_size for p in files) <= CAP
    # every file the manifest names exists, with its size and sha256, under <sha16>/
    on_disk = {p.relative_to(site).as_posix() for p in files}
    for f in m["files"].values():
        data = (site / f["url"].lstrip("/")).read_bytes()
        assert len(data) == f["size"] <= CAP and hashlib.sha256(data).hexdigest() == f["sha256"]
        assert f["url"].split("/")[-2] == f["sha256"][:16]
        on_disk.discard(f["url"].lstrip("/"))
    assert not on_disk                              # and nothing else
    # each chunk = its files concatenated; each tensor there = the store's bytes for that tensor
    src = model_path(SMOL) / "model.q4_1.safetensors"
    header, data0 = read_safetensors_header(src)
    raw = src.read_bytes()
    split = 0
    seen = set()
    for c in m["chunks"]:
        names = [c["file"]] if c["file"] else [p[3] for p in c["pieces"]]
        split += len(names) > 1
        blob = b"".join((site / m["files"][n]["url"].lstrip("/")).read_bytes() for n in names)
        assert len(blob) == c["bytes"] and hashlib.sha256(blob).hexdigest() == c["sha256"]
        for t in c["tensors"]:
            a, b = header[t["name"]]["data_offsets"]
            assert blob[t["offset"]:t["offset"] + t["length"]] == raw[data0 + a:data0 + b], t["name"]
            seen.add(t["name"])
    assert seen == set(header) and split >= 30      # every tensor; every ~3 MB layer is split
    # tokenizer.json (3.5 MB) in parts that join to the store's file
    urls = m["tokenizer"]["tokenizer.json"]
    assert isinstance(urls, list) and len(urls) == 4
    joined = b"".join((site / u.lstrip("/")).read_bytes() for u in urls)
    assert joined == (model_path(SMOL) / "tokenizer.json").read_bytes()


def test_cap_over_a_piece_is_refused_in_one_line(tmp_path):
    r = build(tmp_path / "s", "--max-file-size", "25MiB")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--max-file-size must be between 4 KiB and 16 MiB" in lines[0], r.stderr
    r = build(tmp_path / "s", "--max-file-size", "lots")
    assert r.returncode != 0 and "not a size: 'lots'" in r.stderr.strip().splitlines()[-1], r.stderr
