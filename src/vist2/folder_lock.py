"""One process at a time per output folder: an flock on FOLDER/.vist2.lock held for the process's life."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vist2.errors import Vist2Error

LOCK = ".vist2.lock"


def hold(folder: Path, flag: str):
    """Lock `folder` (named by `flag` in messages) for this process, or say which process holds it.
    Returns the open lock file (keep it referenced); None where the system has no flock."""
    try:
        import fcntl
    except ImportError:  # no flock on this system: no protection against concurrent runs
        return None
    handle = open(folder / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if not isinstance(error, BlockingIOError):  # a file system without flock: say so, run unprotected
            print(f"warning: cannot lock {folder / LOCK} ({error}); do not start a second run on it",
                  file=sys.stderr)
            return handle
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise Vist2Error(f"{folder} is in use by another run ({holder}); wait for it to end or choose "
                         f"another {flag}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle
