"""The lock is the install: every dependency is pinned, and `make test` runs with the pins."""

import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from lock_diff import canonical, differences, installed, read_lock  # noqa: E402

LOCK = ROOT / "requirements" / "lock.txt"


def requirement_names() -> set[str]:
    """Names of vist2's dependencies and of the extras the Makefile installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    makefile = (ROOT / "Makefile").read_text()
    extras = re.search(r"^EXTRAS := (.+)$", makefile, re.M)[1].split(",")
    specs = project["dependencies"] + [s for extra in extras for s in project["optional-dependencies"][extra]]
    return {canonical(re.match(r"[A-Za-z0-9._-]+", spec)[0]) for spec in specs}


def test_every_dependency_is_locked():
    pins = read_lock(LOCK)
    missing = sorted(requirement_names() - set(pins) - {"torch"})
    assert not missing, f"not in {LOCK.name}: {missing}; run `make lock`"
    assert "torch" not in pins  # torch is pinned apart (requirements/torch.txt) so a CUDA build is reused


def test_differences_lists_moved_and_missing():
    assert differences({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "2.1"}) == ["b 2 -> 2.1", "c 3 -> not installed"]


@pytest.mark.skipif(not os.environ.get("VIST2_LOCK"), reason="`make test` sets VIST2_LOCK: checks the install")
def test_installed_versions_are_the_locked_ones():
    pins = read_lock(ROOT / os.environ["VIST2_LOCK"])
    present = installed()
    moved = [line for line in differences(pins, present) if not line.endswith("not installed")]
    assert not moved, f"installed packages differ from the lock: {moved}"
    assert not requirement_names() - {"torch"} - set(present), "a locked dependency is not installed"
