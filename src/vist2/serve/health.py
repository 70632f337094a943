"""For tests, benchmarks and scripts that start a vist2 server: a free loopback port, and a wait
until the server answers /health."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(base: str, seconds: float = 60, server: subprocess.Popen | None = None) -> None:
    """Return once `base`/health answers 200; RuntimeError after `seconds`, or as soon as the
    `server` process (if given) has exited."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the server at {base} exited with status {server.returncode}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server at {base} did not come up within {seconds:g} s")
