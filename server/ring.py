"""The consistent-hash ring that pins a session to the server process holding its KV cache.

Several `pyapp serve` processes sit behind one load balancer that routes every call on a session
(``/v1/sessions/<id>/…``, HTTP and WebSocket) by a consistent hash of the session id. A session's
cache lives in one process only, so a process started with ``--node NAME --ring A,B,…`` mints
only session ids that this ring maps to NAME: whichever process the balancer sends a create to,
every later call on the session reaches that same process.

The ring (the balancer must compute the same one; docs/server.md states it):
``h(s) = first 8 bytes of sha256(s.encode()) as a big-endian unsigned integer``; every node has
``POINTS`` points ``h(f"{node}#{i}")`` for ``i`` in ``0..POINTS-1``; a key belongs to the node of
the first point ``>= h(key)`` (ordered by value, then node name), wrapping to the first point.
"""
from __future__ import annotations

import bisect
import hashlib
import secrets

POINTS = 64


def ring_hash(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big")


class Ring:
    def __init__(self, nodes: list[str], points: int = POINTS):
        if not nodes or len(set(nodes)) != len(nodes) or not all(nodes):
            raise ValueError(f"a ring needs distinct, non-empty node names, not {nodes!r}")
        self.nodes = list(nodes)
        self._points = sorted((ring_hash(f"{n}#{i}"), n) for n in nodes for i in range(points))
        self._values = [v for v, _ in self._points]

    def node_for(self, key: str) -> str:
        i = bisect.bisect_left(self._values, ring_hash(key))
        return self._points[i % len(self._points)][1]


def mint_id(ring: Ring | None, node: str | None) -> str:
    """A fresh, unguessable session id that ``ring`` maps to ``node`` (any id without a ring).
    Each try lands on ``node`` with probability ~1/len(nodes), so this takes a few tries."""
    while True:
        sid = secrets.token_urlsafe(12)
        if ring is None or ring.node_for(sid) == node:
            return sid
