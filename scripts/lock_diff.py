"""Where the installed packages differ from the lock (requirements/lock.txt).

    python scripts/lock_diff.py requirements/lock.txt

Prints one line per package whose installed version is not the locked one ("name locked -> installed");
`make test-latest` runs it to show what moved upstream since the lock was made. Exit status 0.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path


def canonical(name: str) -> str:
    """PEP 503 name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line of a pip-compile output."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match:
            pins[canonical(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    """{canonical name: version} of every distribution in this environment."""
    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def differences(pins: dict[str, str], present: dict[str, str]) -> list[str]:
    """Lines "name locked -> installed" for locked packages installed at another version or missing."""
    return [f"{name} {version} -> {present.get(name, 'not installed')}"
            for name, version in sorted(pins.items()) if present.get(name) != version]


def main() -> int:
    lock = Path(sys.argv[1] if len(sys.argv) > 1 else "requirements/lock.txt")
    moved = differences(read_lock(lock), installed())
    print(f"{len(moved)} packages differ from {lock}" + "".join(f"\n  {line}" for line in moved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
