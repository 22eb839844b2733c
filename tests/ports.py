"""Free ports for the servers tests start in other processes.

A port the kernel hands out for `bind(("127.0.0.1", 0))` comes from the ephemeral range, which
the kernel also uses for the local end of every outgoing connection. Between a test releasing
such a port and its server binding it (a second or more, while a process starts), a connection of
another test (several run at once under pytest-xdist) may take it, and the server cannot listen.
So ports are picked below that range, each xdist worker in a slice of its own, and checked free."""

from __future__ import annotations

import os
import secrets
import socket


def _below_ephemeral() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return max(1024, first - 12000), first


def free_port() -> int:
    low, high = _below_ephemeral()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    span = max(1, (high - low) // count)
    start = low + (index % count) * span
    for _ in range(500):
        port = start + secrets.randbelow(span)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {start} and {start + span}")
