import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from tiny_models import make_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """arch -> (folder, torch model), built once per session."""
    cache = {}

    def get(arch):
        if arch not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{arch}")
            cache[arch] = (d, make_tiny(arch, d))
        return cache[arch]
    return get


@pytest.fixture(scope="module")
def device():
    """A native WebGPU device (wgpu-py: lavapipe here), one per test module; skips without one."""
    from pyapp.gpu.native import NativeDevice
    try:
        return NativeDevice.create()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no WebGPU adapter: {e}")
