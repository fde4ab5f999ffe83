"""What the executor accepts as data: numpy arrays and memoryviews (CPython), JS typed
arrays / ArrayBuffers (Pyodide proxies, never copied into Python), array('f'), lists."""
from __future__ import annotations

from array import array


def nbytes(data):
    nb = getattr(data, "byteLength", None)
    if nb is not None:
        return int(nb)
    return memoryview(data).nbytes


def byte_slice(data, a, b):
    if hasattr(data, "subarray"):           # JS typed array proxy
        return data.subarray(a, b)
    if hasattr(data, "byteLength"):          # JS ArrayBuffer proxy
        return data.slice(a, b)
    return memoryview(data).cast("B")[a:b]


def id_list(ids):
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    out = []
    for i in ids:
        if isinstance(i, (list, tuple)):
            out += list(i)
        else:
            out.append(i)
    return out


def hidden_rows(x, D):
    """(buffer-protocol f32 data, T) for a hidden state [T, D]."""
    if hasattr(x, "astype"):                 # numpy
        import numpy as np
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, D)
        return a, a.shape[0]
    if hasattr(x, "byteLength"):             # JS Float32Array proxy
        return x, int(x.length) // D
    if isinstance(x, array):
        return x, len(x) // D
    a = array("f")
    for r in x:
        if isinstance(r, (list, tuple)):
            a.extend(r)
        else:
            a.append(r)
    return a, len(a) // D
