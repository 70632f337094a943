"""Wait until a vist2 server answers /health: for tests, benchmarks and scripts that start one."""

from __future__ import annotations

import subprocess
import time


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
