"""One way for tests to pick a loopback port for a server they start (or a dead one they point at).

Why not ``bind(0)``: it draws from the kernel's ephemeral range (32768-60999 on Linux), the same range every
outgoing connection and every process that binds port 0 takes its port from -- Ray's GCS, raylet and agents,
PostgreSQL's clients, the test's own HTTP clients.  Between the draw and the server's bind, one of them took the
port once in CI ("Failed to bind to address").  Drawing at random from 20000-32000 stays out of that range and out
of Ray's worker ports (10002-19999), so only another test server could take it, and a random draw makes two of
those colliding unlikely.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32000


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ranges other processes take ports from."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(LOW, HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {LOW}-{HIGH}")
