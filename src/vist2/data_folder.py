"""Files of a data folder the user received (untrusted): the one rule every reader applies.

A file found in (or named inside) a data folder is read only if it resolves to a regular file
inside that folder: a symlink that leads out of it is refused unless the user opts out
(`follow_symlinks`, the --follow-symlinks flag), and FIFOs, devices and sockets are refused
always (they can block or never end). A file the user names directly is the user's choice:
it must only be a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vist2.errors import Vist2Error

OPT_OUT = "--follow-symlinks"


def regular_file(path: Path, max_bytes: int | None = None) -> Path:
    """path, checked to be a regular file (after symlinks) of at most `max_bytes` (None: any size)."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise Vist2Error(f"{path}: cannot read ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise Vist2Error(f"{path}: not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise Vist2Error(f"{path}: {info.st_size} bytes, more than the {max_bytes} allowed")
    return path


def inside(root: Path, path: Path, follow_symlinks: bool = False, opt_out: str | None = OPT_OUT) -> Path:
    """path (found under root), checked to resolve inside root unless `follow_symlinks`;
    the message names `opt_out`, the flag that allows it (None: no flag does)."""
    if follow_symlinks:
        return path
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        hint = f" (pass {opt_out} to read it)" if opt_out else ""
        raise Vist2Error(f"{path}: resolves to {real}, outside the data folder {root}{hint}")
    return path


def file_in(root: Path, name: str, follow_symlinks: bool = False, max_bytes: int | None = None,
            opt_out: str | None = OPT_OUT) -> Path:
    """root/name: inside root (see `inside`), existing, a regular file of at most `max_bytes`."""
    path = inside(root, root / name, follow_symlinks, opt_out)
    if not path.exists():
        raise Vist2Error(f"{path}: no such file in the data folder")
    return regular_file(path, max_bytes)


def files_under(root: Path, suffixes: tuple[str, ...] | None, follow_symlinks: bool = False) -> list[Path]:
    """Every file under root with one of `suffixes` (None: every file), sorted, each checked by
    `file_in`'s rule; symlinks to folders are not descended into."""
    found = sorted(p for p in root.rglob("*") if (suffixes is None or p.suffix in suffixes) and not p.is_dir())
    return [regular_file(inside(root, path, follow_symlinks)) for path in found]
